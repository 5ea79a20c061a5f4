"""SIGTERM of an instance that holds work (issue 14): two instances with a 300 s lease, so that
only the release at shutdown can explain the other instance taking the work over.

Instance A holds every job, each in the middle of its submission to a slow provider (the
simulators hold every API request HOLD_S, far longer than SHUTDOWN_GRACE_S, until the test
lowers the delay); B is idle. A gets SIGTERM: its readiness answers 503 while it still serves,
its submissions are cut at the grace (the simulators never handle a request whose client left),
its leases are released (due now, NOTIFY jobs_due), and it exits 0. B takes the jobs over at
once: each was started but its answer never recorded, so B settles it by the unknown-outcome
logic (the provider's list, or fal's callback), never by sending it blindly again. Every job
ends; no provider job is created twice.

The holds end when the test says so, not after a fixed time: however long B takes to start on
a loaded machine, A's work is still in flight when it gets the signal."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web

from tests.chaos.harness import CHAOS_MARKS, Process, audit, free_port
from tests.chaos.test_archive_crash import file_requests
from tests.chaos.test_chaos import CLEAN, MODEL, Chaos

pytestmark = CHAOS_MARKS

JOBS = 6  # two per provider
LEASE_S = 300  # WORKER_LEASE_S: a take-over before it runs out is the release's doing
GRACE_S = 1.0  # SHUTDOWN_GRACE_S
HOLD_S = 3600  # slow_seconds / file_slow_seconds until the test lowers them to 0
# What A may take to exit after SIGTERM: the grace, aiohttp's shutdown_timeout (10 s, for open
# requests; there are none here) and the closing.
EXIT_BOUND_S = GRACE_S + 10 + 5


def log_lines(process: Process, event: str) -> list[dict[str, Any]]:
    lines = []
    for raw in process.log_path.read_bytes().splitlines():
        with_event = raw.strip().startswith(b"{") and event.encode() in raw
        if with_event:
            line = orjson.loads(raw)
            if line.get("event") == event:
                lines.append(line)
    return lines


async def all_held_mid_submission(conn: asyncpg.Connection) -> bool:
    """Every job's submission started, unanswered, and its lease (300 s) held: by A, the only
    instance running."""
    held = await conn.fetchval(
        "SELECT count(*) FROM jobs "
        "WHERE submit_started_at IS NOT NULL AND provider_job_id IS NULL "
        "  AND lease_owner IS NOT NULL AND next_action_at > now() + interval '200 seconds'"
    )
    return bool(held == JOBS)


async def count_events(conn: asyncpg.Connection, kind: str) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM job_events WHERE type = $1", kind)
    return count


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "web-concurrency-2"])
async def test_sigterm_releases_work_in_flight_to_the_other_instance(
    tmp_path: Path, processes: int
) -> None:
    run = Chaos(
        tmp_path,
        instances=2,
        faults={**CLEAN, "slow_seconds": HOLD_S},
        extra_env={
            "WORKER_LEASE_S": str(LEASE_S), "SHUTDOWN_GRACE_S": str(GRACE_S),
            "WEB_CONCURRENCY": str(processes), "LOG_LEVEL": "info",
        },
    )  # fmt: skip
    a, b = 0, 1
    try:
        await run.start()
        instance_a, instance_b = run.instances[a], run.instances[b]
        # B is stopped (a SIGTERM with nothing in flight: a clean exit) until A holds the work.
        instance_b.stop()
        assert instance_b.proc is not None and instance_b.proc.returncode == 0
        url_a = f"http://127.0.0.1:{run.ports[a]}"
        acknowledged: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=url_a, timeout=15) as client:
            await asyncio.gather(*(run.submit(client, i, acknowledged) for i in range(JOBS)))
        conn = await asyncpg.connect(run.dsn)
        try:
            while not await all_held_mid_submission(conn):  # noqa: ASYNC110 - another process's progress
                await asyncio.sleep(0.05)
            instance_b.start()
            await instance_b.ready()

            assert instance_a.proc is not None
            signalled = time.monotonic()
            os.killpg(instance_a.proc.pid, signal.SIGTERM)
            # Readiness goes 503 while A still serves (liveness stays 200).
            async with httpx.AsyncClient(base_url=url_a, timeout=5) as client:
                while (ready := await client.get("/readyz")).status_code == 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                assert ready.status_code == 503
                assert ready.json()["error"]["code"] == "shutting_down"
                assert (await client.get("/healthz")).status_code == 200
            exit_code = await asyncio.to_thread(instance_a.proc.wait, EXIT_BOUND_S)
            exited_s = time.monotonic() - signalled
            assert exit_code == 0, instance_a.tail()
            # B's first look at each job it took over records the unknown outcome.
            while await count_events(conn, "submission_outcome_unknown") < JOBS:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            picked_up_s = time.monotonic() - signalled
            await run.configure_sims(list(run.sims), {"slow_seconds": 0})  # B's requests go
            # B took every job over and settled it; all of it well before A's leases ran out.
            await run.wait_all_terminal(within_s=LEASE_S / 2)
            taken_over_s = time.monotonic() - signalled
            owners = await conn.fetch("SELECT DISTINCT lease_owner FROM jobs")
            # When B's first look at each job was committed (same machine, same clock as A's log).
            taken_at = await conn.fetchval(
                "SELECT max(created_at) FROM job_events WHERE type = 'submission_outcome_unknown'"
            )
            events = await conn.fetch(
                "SELECT type, count(*) AS n FROM job_events GROUP BY type ORDER BY type"
            )
        finally:
            await conn.close()
        released = log_lines(instance_a, "shutdown_released")
        started = log_lines(instance_a, "shutdown_started")
        released_at = max(datetime.fromisoformat(r["timestamp"]) for r in released)
        after_release_ms = (taken_at - released_at).total_seconds() * 1000
        await audit(run.dsn, acknowledged=acknowledged, sim_jobs=await run.sim_records(),
                    tally=run.tally)  # fmt: skip
        print(
            f"\ngraceful shutdown ({processes} process(es)): A exited 0 in {exited_s:.2f} s, "
            f"B had taken every job over {picked_up_s:.2f} s after the SIGTERM "
            f"({after_release_ms:.0f} ms after A's release was logged), "
            f"every job ended {taken_over_s:.2f} s after the SIGTERM (lease {LEASE_S} s); "
            f"released: {[r['released'] for r in released]}, release_ms: "
            f"{[r['release_ms'] for r in released]}, drain_s: {[r['drain_s'] for r in released]}; "
            f"events: {dict((e['type'], e['n']) for e in events)}; " + run.tally.line()
        )
        assert len(started) == len(released) == processes  # one of each per process
        assert sum(r["released"]["jobs"] for r in released) == JOBS
        assert sum(sum(r["cancelled"].values()) for r in released) == JOBS
        assert picked_up_s < taken_over_s < LEASE_S
        assert [o["lease_owner"] for o in owners] == [None]
        assert run.tally.jobs == JOBS and run.tally.lost == [] and run.tally.not_terminal == []
        assert run.tally.submitted_twice == []  # each provider job created once at most
        assert run.tally.duplicate_transitions == [] and run.tally.seq_gaps == []
        # A's cut submissions never reached a provider. Krea and Scenario list their jobs: B
        # learns they were never created and sends them (once). fal has no list: B waits for a
        # callback with the job's token, none comes, and the job fails
        # submission_outcome_unknown, the existing, deliberate end of that case.
        assert run.tally.faults["abandoned_requests"] >= JOBS
        assert run.tally.outcomes == {
            "succeeded": JOBS * 2 // 3, "failed:submission_outcome_unknown": JOBS // 3,
        }  # fmt: skip
        assert run.tally.terminal_sources["fal:system"] == JOBS // 3
    finally:
        await run.close()


WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-length").decode()
DELIVERY_LEASE_S = 60  # the deliverer's lease (not WORKER_LEASE_S)


class HoldingReceiver:
    """A client's webhook endpoint that holds every request while `hold` is set (as a slow
    client does), then answers 200 at once."""

    def __init__(self) -> None:
        self.hold = True
        self.let_go = asyncio.Event()
        self.held: list[str] = []
        self.answered: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def close(self) -> None:
        self.let_go.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        webhook_id = request.headers["webhook-id"]
        await request.read()
        if self.hold:
            self.held.append(webhook_id)
            await self.let_go.wait()
            return web.Response(status=200)
        self.answered[webhook_id] += 1
        return web.Response(status=200)


async def all_deliveries_held(conn: asyncpg.Connection, receiver: HoldingReceiver) -> bool:
    """Every delivery there will be is enqueued (the jobs ended, their outputs archived) and
    claimed by A, none delivered, and the endpoint's 4 slots are taken at the receiver."""
    held: bool = await conn.fetchval(
        "SELECT count(*) > 0 AND bool_and(state = 'pending' AND lease_owner IS NOT NULL"
        "                                 AND next_attempt_at > now() + interval '30 seconds')"
        "   AND NOT EXISTS (SELECT 1 FROM output_archives WHERE state = 'pending') "
        "FROM webhook_deliveries"
    )
    return held and len(receiver.held) >= 4


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_sigterm_releases_webhook_deliveries_held_at_a_slow_client(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A holds every delivery of its jobs' webhooks (4 in flight at a client that does not
    answer, the rest waiting for the endpoint's slot); SIGTERM: the 4 are cut at the grace, the
    rest not started, all released; B delivers each once (same webhook-id), well before the
    deliverer's 60 s lease would have run out."""
    receiver = HoldingReceiver()
    run = Chaos(
        tmp_path,
        instances=2,
        faults=CLEAN,
        extra_env={
            "WORKER_LEASE_S": str(LEASE_S), "SHUTDOWN_GRACE_S": str(GRACE_S), "LOG_LEVEL": "info",
            "CLIENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "CLIENT_WEBHOOK_ALLOW_PRIVATE": "true",
        },
    )  # fmt: skip
    try:
        await receiver.start()
        await run.start()
        instance_a, instance_b = run.instances
        instance_b.stop()
        url_a = f"http://127.0.0.1:{run.ports[0]}"
        async with httpx.AsyncClient(base_url=url_a, timeout=15) as client:
            for i in range(3):
                response = await client.post("/v1/jobs", json={
                    "provider": "krea", "model": MODEL["krea"],
                    "input": {"prompt": f"a harbour #hook-{i}"}, "webhook_url": receiver.url,
                })  # fmt: skip
                assert response.status_code == 202, response.text
        await run.wait_all_terminal(within_s=60)
        conn = await asyncpg.connect(run.dsn)
        try:
            while not await all_deliveries_held(conn, receiver):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process's progress: polled
            deliveries = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
            instance_b.start()
            await instance_b.ready()
            receiver.hold = False  # A's 4 requests stay held; what comes next is answered
            assert instance_a.proc is not None
            signalled = time.monotonic()
            os.killpg(instance_a.proc.pid, signum)
            exit_code = await asyncio.to_thread(instance_a.proc.wait, EXIT_BOUND_S)
            exited_s = time.monotonic() - signalled
            assert exit_code == 0, instance_a.tail()
            while await conn.fetchval(  # noqa: ASYNC110 - B's progress
                "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'"
            ):
                await asyncio.sleep(0.02)
            delivered_s = time.monotonic() - signalled
            attempts = await conn.fetch(
                "SELECT d.id, d.attempts, count(a.id) AS recorded FROM webhook_deliveries d "
                "LEFT JOIN webhook_attempts a ON a.delivery_id = d.id GROUP BY d.id, d.attempts"
            )
        finally:
            await conn.close()
        released = log_lines(instance_a, "shutdown_released")
        print(
            f"\ngraceful shutdown (webhooks, {signum.name}): {deliveries} deliveries held by A ({len(receiver.held)} "
            f"in flight at the client); A exited 0 in {exited_s:.2f} s; B delivered them all "
            f"{delivered_s:.2f} s after the signal (lease {DELIVERY_LEASE_S} s); released: "
            f"{released[0]['released']}, cancelled: {released[0]['cancelled']}, "
            f"release_ms: {released[0]['release_ms']}"
        )
        assert log_lines(instance_a, "shutdown_started")[0]["signal"] == signum.name
        assert released[0]["released"]["webhooks"] == deliveries
        assert released[0]["cancelled"]["webhooks"] == deliveries  # 4 cut, the rest not started
        assert delivered_s < DELIVERY_LEASE_S
        # Each delivery delivered once, with one recorded attempt (A's cut ones left no record);
        # those A had in flight were sent again under the same webhook-id.
        assert len(receiver.answered) == deliveries
        assert set(receiver.answered.values()) == {1}
        assert set(receiver.held) <= set(receiver.answered)
        assert {(r["attempts"], r["recorded"]) for r in attempts} == {(1, 1)}
    finally:
        await run.close()
        await receiver.close()


async def all_outputs_held(conn: asyncpg.Connection, run: Chaos) -> bool:
    """Every output enqueued (the jobs ended) is claimed by A (300 s lease) and its download
    under way at the simulator (whose bodies come late)."""
    held: bool = await conn.fetchval(
        "SELECT count(*) > 0 AND bool_and(state = 'pending' AND lease_owner IS NOT NULL"
        "                                 AND next_attempt_at > now() + interval '200 seconds') "
        "FROM output_archives"
    )
    return held and await file_requests(run) >= await conn.fetchval(
        "SELECT count(*) FROM output_archives"
    )


async def test_sigterm_releases_output_downloads_in_flight(tmp_path: Path) -> None:
    """A is downloading every output (bodies held until the test lets them go,
    ARCHIVE_LEASE_S=300); SIGTERM: the downloads are cut at the grace and released; B
    downloads, stores and records each once."""
    run = Chaos(
        tmp_path,
        instances=2,
        faults={**CLEAN, "file_slow_seconds": HOLD_S},
        extra_env={
            "WORKER_LEASE_S": str(LEASE_S), "ARCHIVE_LEASE_S": str(LEASE_S),
            "SHUTDOWN_GRACE_S": str(GRACE_S), "LOG_LEVEL": "info",
        },
    )  # fmt: skip
    try:
        await run.start()
        instance_a, instance_b = run.instances
        instance_b.stop()
        acknowledged: dict[str, str] = {}
        url_a = f"http://127.0.0.1:{run.ports[0]}"
        async with httpx.AsyncClient(base_url=url_a, timeout=15) as client:
            await asyncio.gather(*(run.submit(client, i, acknowledged) for i in range(3)))
        await run.wait_all_terminal(within_s=60)
        conn = await asyncpg.connect(run.dsn)
        try:
            while not await all_outputs_held(conn, run):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process's progress: polled
            outputs = await conn.fetchval("SELECT count(*) FROM output_archives")
            instance_b.start()
            await instance_b.ready()
            assert instance_a.proc is not None
            signalled = time.monotonic()
            os.killpg(instance_a.proc.pid, signal.SIGTERM)
            exit_code = await asyncio.to_thread(instance_a.proc.wait, EXIT_BOUND_S)
            exited_s = time.monotonic() - signalled
            assert exit_code == 0, instance_a.tail()
            await run.configure_sims(list(run.sims), {"file_slow_seconds": 0})  # B's bodies go
            while await conn.fetchval(  # noqa: ASYNC110 - B's progress
                "SELECT count(*) FROM output_archives WHERE state = 'pending'"
            ):
                await asyncio.sleep(0.05)
            archived_s = time.monotonic() - signalled
            rows = await conn.fetch("SELECT state, attempts FROM output_archives")
        finally:
            await conn.close()
        released = log_lines(instance_a, "shutdown_released")
        await audit(run.dsn, acknowledged=acknowledged, sim_jobs=await run.sim_records(),
                    tally=run.tally)  # fmt: skip
        print(
            f"\ngraceful shutdown (archives): {outputs} downloads in flight at A; A exited 0 in "
            f"{exited_s:.2f} s; B archived them all {archived_s:.2f} s after the SIGTERM "
            f"(bodies held until A exited; lease {LEASE_S} s); released: {released[0]['released']}, "
            f"cancelled: {released[0]['cancelled']}, release_ms: {released[0]['release_ms']}"
        )
        assert released[0]["released"]["archives"] == outputs
        assert released[0]["cancelled"]["archives"] == outputs
        assert archived_s < LEASE_S
        assert {r["state"] for r in rows} == {"archived"}
        assert {r["attempts"] for r in rows} == {2}  # A's cut attempt, then B's
        assert run.tally.archived_twice == [] and run.tally.duplicate_transitions == []
    finally:
        await run.close()
