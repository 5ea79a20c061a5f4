"""The whole stack for provider tests: the three simulators, the service (API, callbacks and
runner) configured to use them, and a way to await a job's progress without sleeping: the
test LISTENs on the same NOTIFY channel the event store signals on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from service.config import Settings
from service.db.database import Database
from service.web.app import HUB_KEY, RUNNER_KEY
from service.workers.schedule import DEFAULT_TIMINGS, PollPolicy, ProviderTiming
from simulators import RunningSimulators, SimulatorConfig, start_simulators
from tests.conftest import Service, start_service

TERMINAL = {"succeeded", "failed", "canceled"}
ARCHIVE_EVENTS = ("output_archived", "output_archive_failed")

# Quick polling so Scenario tests take a fraction of a second; webhook providers keep a long
# grace period so their terminal news can only come by webhook unless a test says otherwise.
FAST_TIMINGS = {
    "scenario": ProviderTiming(
        webhook_grace_s=None, poll=PollPolicy(first_s=0.05, factor=1.2, max_s=0.2)
    ),
    "krea": DEFAULT_TIMINGS["krea"],
    "fal": DEFAULT_TIMINGS["fal"],
}


class JobWatcher:
    """Wakes whenever the event store commits an event (NOTIFY job_events)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.changed = asyncio.Condition()

    async def start(self) -> None:
        await self.conn.add_listener("job_events", self._on_notify)

    def _on_notify(self, *_args: Any) -> None:
        asyncio.get_running_loop().create_task(self._notify_all())

    async def _notify_all(self) -> None:
        async with self.changed:
            self.changed.notify_all()


@dataclass
class Stack:
    sims: RunningSimulators
    service: Service
    http: httpx.AsyncClient
    watcher: JobWatcher

    async def create(
        self, provider: str, model: str, input: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/jobs", json={"provider": provider, "model": model, "input": input, **extra}
        )
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200
        job: dict[str, Any] = response.json()
        return job

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await self.http.get(f"/v1/jobs/{job_id}/events")).json()[
            "events"
        ]
        return events

    async def wait_for(
        self, job_id: str, statuses: set[str] = TERMINAL, *, within_s: float = 20.0
    ) -> dict[str, Any]:
        """The job once its status is in `statuses`; waits on commits, not on a clock."""

        async def reached() -> dict[str, Any]:
            async with self.watcher.changed:
                while True:
                    job = await self.job(job_id)
                    if job["status"] in statuses:
                        return job
                    await self.watcher.changed.wait()

        return await asyncio.wait_for(reached(), within_s)

    async def outputs_settled(self, job_id: str, *, within_s: float = 20.0) -> dict[str, Any]:
        """The job once each of its outputs has its archive event (archived or failed); waits
        on the log's commits (NOTIFY), not on a clock."""

        async def settled() -> dict[str, Any]:
            async with self.watcher.changed:
                while True:
                    # Events first: the job read after them holds at least what they record
                    # (each archive event commits with its output's fields).
                    done = [e for e in await self.events(job_id) if e["type"] in ARCHIVE_EVENTS]
                    job = await self.job(job_id)
                    if job["status"] == "succeeded" and len(done) >= len(job["outputs"]):
                        return job
                    await self.watcher.changed.wait()

        return await asyncio.wait_for(settled(), within_s)

    async def hub_has_subscriber(self) -> None:
        """Returns once a stream on this instance has subscribed to the live events."""
        hub = self.service.app[HUB_KEY]
        while hub.subscriber_count == 0:
            hub.subscribed.clear()
            await asyncio.wait_for(hub.subscribed.wait(), 10)

    async def wait_for_event(
        self,
        job_id: str,
        event_type: str,
        *,
        within_s: float = 20.0,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The job's first event of `event_type` (whose data has the items of `data`)."""

        async def seen() -> dict[str, Any]:
            async with self.watcher.changed:
                while True:
                    for event in await self.events(job_id):
                        wanted = (data or {}).items() <= event["data"].items()
                        if event["type"] == event_type and wanted:
                            return event
                    await self.watcher.changed.wait()

        return await asyncio.wait_for(seen(), within_s)


def stack_settings(sims: RunningSimulators, **overrides: Any) -> Settings:
    """The service pointed at the simulators. Outputs are not archived unless a test says where
    (`output_store_url`): the archiver's events and webhooks would otherwise race with the exact
    histories other tests assert (tests/acceptance/test_archive.py archives)."""
    return Settings.model_validate({
        "host": "127.0.0.1", "port": 0, "output_store_url": "none",
        "krea_api_url": sims.krea_url, "krea_api_token": sims.krea_token,
        "fal_queue_url": sims.fal_url, "fal_key": sims.fal_key, "fal_jwks_url": sims.fal_jwks_url,
        "scenario_api_url": sims.scenario_url, "scenario_api_key": sims.scenario_api_key,
        "scenario_api_secret": sims.scenario_api_secret, **overrides,
    })  # fmt: skip


@asynccontextmanager
async def running_stack(
    database_url: str,
    *,
    sim_config: SimulatorConfig | None = None,
    timings: dict[str, ProviderTiming] | None = None,
    settings: dict[str, Any] | None = None,
    runner_options: dict[str, Any] | None = None,
    pooled_url: str | None = None,
) -> AsyncIterator[Stack]:
    """`pooled_url`: the pool goes there (a pooler in transaction mode: DATABASE_URL), while
    LISTEN, the service's and the watcher's, stays on `database_url` (DATABASE_LISTEN_URL)."""
    sims = await start_simulators(
        config=sim_config or SimulatorConfig(queue_seconds=0.05, run_seconds=0.1)
    )
    urls = {"database_url": pooled_url, "database_listen_url": database_url} if pooled_url else {}
    options = stack_settings(sims, **urls, **(settings or {}))
    db = await Database.open(
        pooled_url or database_url, pooled=options.database_pooled, min_size=1, max_size=10
    )
    # The service's own URL is only known once it listens: bind first, then point callbacks there.
    service = await start_service(
        options, db, run_workers=True,
        runner_options={"timings": timings or FAST_TIMINGS, **(runner_options or {})},
    )  # fmt: skip
    service.app[RUNNER_KEY].callback_base_url = service.url
    listen = await asyncpg.connect(database_url)
    watcher = JobWatcher(listen)
    await watcher.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            yield Stack(sims=sims, service=service, http=http, watcher=watcher)
    finally:
        await listen.close()
        await service.server.close()
        await sims.close()
