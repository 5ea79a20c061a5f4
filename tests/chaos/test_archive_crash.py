"""kill -9 of the only instance while it is downloading outputs (the simulators hold each
output's body until the test lets them go), then a restart: once the lease runs out the outputs
are downloaded again, and every output ends stored once under its key and recorded once, with
the sha256 of the bytes kept."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.chaos.harness import CHAOS_MARKS, audit
from tests.chaos.test_chaos import CLEAN, Chaos

pytestmark = CHAOS_MARKS

JOBS = 6  # two per provider
HOLD_S = 3600  # file_slow_seconds until the kill, then 0
LEASE_S = 3  # ARCHIVE_LEASE_S of this test


async def file_requests(run: Chaos) -> int:
    total = 0
    async with httpx.AsyncClient() as client:
        for url in run.sims.values():
            total += int((await client.get(f"{url}/_sim/stats")).json()["file_requests"])
    return total


async def test_a_kill_mid_download_stores_and_records_each_output_once(tmp_path: Path) -> None:
    run = Chaos(
        tmp_path,
        instances=1,
        faults={**CLEAN, "file_slow_seconds": HOLD_S},
        extra_env={"ARCHIVE_LEASE_S": str(LEASE_S), "OUTPUT_FETCH_BACKOFF_S": "0.1"},
    )
    try:
        await run.start()
        acknowledged: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=run.balancer.url, timeout=15) as client:
            await asyncio.gather(*(run.submit(client, i, acknowledged) for i in range(JOBS)))
        conn = await asyncpg.connect(run.dsn)
        try:
            # Another process's progress: no event reaches this one, so it is polled. A claimed
            # output whose request reached the simulator is mid-download: the body is late.
            while not (  # noqa: ASYNC110
                await conn.fetchval(
                    "SELECT count(*) FROM output_archives "
                    "WHERE state = 'pending' AND lease_owner IS NOT NULL"
                )
                and await file_requests(run) > 0
            ):
                await asyncio.sleep(0.05)
            run.instances[0].kill9()
            in_flight = await conn.fetchval(
                "SELECT count(*) FROM output_archives WHERE state = 'pending' AND lease_owner IS NOT NULL"
            )
            requested_at_kill = await file_requests(run)
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM job_events WHERE type = 'output_archived'"
                )
                == 0
            )
            await run.configure_sims(list(run.sims), {"file_slow_seconds": 0})
            run.instances[0].start()
            await run.instances[0].ready()
            await run.wait_all_terminal(within_s=60)
            while await conn.fetchval(  # noqa: ASYNC110 - the restarted process's progress
                "SELECT count(*) FROM output_archives WHERE state = 'pending'"
            ):
                await asyncio.sleep(0.1)
            rows = await conn.fetch(
                "SELECT a.job_id, a.output_index, a.state, a.attempts, a.storage_key, a.sha256, "
                "       a.bytes, j.outputs -> a.output_index AS output "
                "FROM output_archives a JOIN jobs j ON j.id = a.job_id"
            )
            recorded = await conn.fetch(
                "SELECT job_id, (data->>'index')::int AS index, count(*) AS n FROM job_events "
                "WHERE type = 'output_archived' GROUP BY 1, 2"
            )
            failed = await conn.fetchval(
                "SELECT count(*) FROM job_events WHERE type = 'output_archive_failed'"
            )
        finally:
            await conn.close()
        await audit(run.dsn, acknowledged=acknowledged, sim_jobs=await run.sim_records(),
                    tally=run.tally)  # fmt: skip
        print(f"\narchive crash: {in_flight} outputs claimed at the kill, {requested_at_kill} "
              f"downloads started before it, {await file_requests(run)} in all; "
              + run.tally.line())  # fmt: skip
        assert in_flight >= 1
        assert len(rows) >= JOBS and {r["state"] for r in rows} == {"archived"}
        assert failed == 0
        assert {(r["job_id"], r["index"]): r["n"] for r in recorded} == {
            (r["job_id"], r["output_index"]): 1 for r in rows
        }
        assert max(r["attempts"] for r in rows) >= 2  # the killed attempts were taken over
        store = tmp_path / "outputs"
        files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
        assert files == sorted(r["storage_key"] for r in rows)  # one object per output
        for r in rows:
            data = (store / r["storage_key"]).read_bytes()
            assert (
                hashlib.sha256(data).hexdigest()
                == r["sha256"]
                == orjson.loads(r["output"])["sha256"]
            )
            assert len(data) == r["bytes"]
        assert await file_requests(run) > len(rows)  # the interrupted downloads were redone
        assert run.tally.archived_twice == [] and run.tally.duplicate_transitions == []
    finally:
        await run.close()
