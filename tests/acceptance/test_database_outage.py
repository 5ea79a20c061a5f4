"""With PostgreSQL stopped the service answers 503 and records nothing; once PostgreSQL is back
it serves again without a restart of its own."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from service.config import Settings
from service.db.database import Database
from service.web.app import prepare_database
from tests.conftest import PROVIDERS_OFFLINE, start_service
from tests.postgres_servers import server_for_tests

JOB = {"provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": "a fox"}}


async def test_outage_gives_503_and_the_service_recovers_by_itself(tmp_path: Path) -> None:
    server = server_for_tests(tmp_path / "outage")
    dsn = server.start()
    try:
        await prepare_database(dsn)
        db = await Database.open(dsn, min_size=2, max_size=4)
        svc = await start_service(
            Settings.model_validate({"host": "127.0.0.1", "port": 0, **PROVIDERS_OFFLINE}), db
        )
        async with httpx.AsyncClient(base_url=svc.url) as http:
            assert (await http.post("/v1/jobs", json=JOB)).status_code == 202
            assert (
                'jobs{provider="krea",status="accepted"} 1.0' in (await http.get("/metrics")).text
            )

            server.stop()
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "database_unavailable"
            for _ in range(3):  # every pooled connection is dead; each attempt must say 503
                refused = await http.post(
                    "/v1/jobs", json=JOB, headers={"Idempotency-Key": "during"}
                )
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "database_unavailable"
            assert (await http.get("/v1/jobs")).status_code == 503
            # A provider callback is not acknowledged either: the provider will retry it.
            callback = await http.post(
                "/callbacks/krea/job_01JAAAAAAAAAAAAAAAAAAAAAAA/some-token",
                json={"job_id": "x", "status": "completed"},
            )
            assert callback.status_code == 503
            assert callback.json()["error"]["code"] == "database_unavailable"
            # /metrics is still served, the database's gauges at their last readings, the 503s
            # counted under their routes' patterns.
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert 'jobs{provider="krea",status="accepted"} 1.0' in metrics.text
            assert (
                'http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="503"}'
                in metrics.text
            )

            server.start()
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.post("/v1/jobs", json=JOB)).status_code == 202
            jobs = (await http.get("/v1/jobs")).json()["jobs"]
            assert len(jobs) == 2  # nothing was recorded during the outage
        await svc.server.close()
        conn = await asyncpg.connect(dsn)
        try:
            assert (
                await conn.fetchval("SELECT count(*) FROM jobs WHERE idempotency_key = 'during'")
                == 0
            )
        finally:
            await conn.close()
    finally:
        server.close()
