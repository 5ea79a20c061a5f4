"""Chaos: several service instances on one PostgreSQL behind a load balancer, the provider
simulators with faults on (duplicate, dropped and late webhooks, 429, 503, failed jobs), two
instances killed with SIGKILL mid-load and restarted, and PostgreSQL stopped and started; once
more through PgBouncer in transaction mode.

Afterwards every job must be terminal, none lost, none submitted twice, no transition repeated,
and every job's history gap-free. The run prints its tally."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.chaos.harness import (
    CHAOS_MARKS,
    Balancer,
    Process,
    Tally,
    audit,
    free_port,
    python,
    service_env,
)
from tests.pgbouncer import PgBouncer
from tests.postgres_servers import server_for_tests

pytestmark = CHAOS_MARKS

JOBS = 150
POOLED_JOBS = 60  # through PgBouncer: fewer, spread over the same faults (CI's time budget)
INSTANCES = 3
MODEL = {"krea": "bfl/flux-1-dev", "fal": "fal-ai/flux/krea", "scenario": "model_flux-krea-dev"}
SIM_FAULTS = {
    "callback_duplicates": 1,  # every webhook delivered twice
    "callback_drop_rate": 0.15,  # some webhooks never sent
    "callback_delay_seconds": 0.3,  # and all late
    "fail_rate": 0.05,
    "rate_limit_next": 6,
    "retry_after_seconds": 0.2,
    "server_error_next": 4,
    "server_error_status": 503,
    "random_seed": 7,
}


CLEAN = {"random_seed": 7}  # no faults


class Chaos:
    def __init__(
        self,
        tmp: Path,
        *,
        instances: int = INSTANCES,
        faults: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        pgbouncer: bool = False,
    ) -> None:
        """`pgbouncer`: the instances' DATABASE_URL is PgBouncer in transaction mode (two
        server connections) and their DATABASE_LISTEN_URL the server itself."""
        self.tmp = tmp
        self.faults = SIM_FAULTS if faults is None else faults
        self.extra_env = extra_env or {}
        self.pg = server_for_tests(tmp / "pg")
        self.bouncer: PgBouncer | None = None
        self.with_pgbouncer = pgbouncer
        self.sim_ports = {name: free_port() for name in MODEL}
        self.sims = {name: f"http://127.0.0.1:{port}" for name, port in self.sim_ports.items()}
        self.ports = [free_port() for _ in range(instances)]
        self.balancer = Balancer([f"http://127.0.0.1:{p}" for p in self.ports])
        self.instances: list[Process] = []
        self.simulator: Process | None = None
        self.dsn = ""
        self.tally = Tally()

    async def start(self) -> None:
        self.dsn = self.pg.start()
        instance_dsn = self.dsn
        if self.with_pgbouncer:
            self.bouncer = PgBouncer(self.dsn, pool_size=2)
            await self.bouncer.start()
            instance_dsn = self.bouncer.url(self.dsn)
            self.extra_env = {"DATABASE_LISTEN_URL": self.dsn, **self.extra_env}
        await self.balancer.start()
        self.simulator = Process(
            "simulators",
            [
                python(),
                "-m",
                "simulators",
                "--krea-port",
                str(self.sim_ports["krea"]),
                "--fal-port",
                str(self.sim_ports["fal"]),
                "--scenario-port",
                str(self.sim_ports["scenario"]),
                "--queue-seconds",
                "0.3",
                "--run-seconds",
                "0.7",
            ],
            env=service_env(dsn="", port=0, public_url="", sims=self.sims, log_dir=self.tmp),
            log_dir=self.tmp,
            health_url=f"{self.sims['krea']}/_sim/stats",
        )
        self.simulator.start()
        await self.simulator.ready()
        async with httpx.AsyncClient() as client:
            for url in self.sims.values():
                response = await client.post(f"{url}/_sim/config", json=self.faults)
                assert response.status_code == 200, response.text
        for i, port in enumerate(self.ports):
            env = service_env(
                dsn=instance_dsn,
                port=port,
                public_url=self.balancer.url,
                sims=self.sims,
                log_dir=self.tmp,
            )
            env.update(self.extra_env)
            self.instances.append(Process(f"instance-{i}", [python(), "-m", "service", "serve"], env=env,
                                          log_dir=self.tmp, health_url=f"http://127.0.0.1:{port}/healthz"))  # fmt: skip
        for instance in self.instances:  # all at once: migrations are applied under a lock
            instance.start()
        await asyncio.gather(*(i.ready() for i in self.instances))

    async def close(self) -> None:
        for process in [*self.instances, *([self.simulator] if self.simulator else [])]:
            process.stop()
        await self.balancer.close()
        if self.bouncer is not None:
            self.bouncer.stop()
        self.pg.close()

    async def kill_and_restart(self, index: int, *, down_s: float) -> None:
        self.instances[index].kill9()
        self.tally.faults["instance_kill9"] += 1
        await asyncio.sleep(down_s)  # the outage itself, not synchronisation
        self.instances[index].start()
        await self.instances[index].ready()

    async def database_outage(self, *, down_s: float, stopped: asyncio.Event | None = None) -> None:
        """PostgreSQL stopped for `down_s` (`stopped` is set once it is down), then started."""
        self.pg.stop(mode="immediate")
        self.tally.faults["database_stops"] += 1
        if stopped is not None:
            stopped.set()
        await asyncio.sleep(down_s)  # the outage itself
        self.pg.start()

    async def submit(self, client: httpx.AsyncClient, i: int, acknowledged: dict[str, str]) -> None:
        """One client job, retried with its Idempotency-Key until acknowledged (at-least-once
        intake from the client's side)."""
        provider = list(MODEL)[i % len(MODEL)]
        key = f"chaos-{i:04d}"
        body = {
            "provider": provider,
            "model": MODEL[provider],
            "input": {"prompt": f"a harbour #{key}"},
        }
        for _ in range(300):
            try:
                response = await client.post(
                    "/v1/jobs", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code in (200, 202):
                acknowledged[key] = response.json()["id"]
                return
            if response is not None and response.status_code not in (502, 503):
                raise AssertionError(f"{key}: {response.status_code} {response.text}")
            self.tally.faults["client_retries"] += 1
            await asyncio.sleep(0.1)  # a client's backoff before retrying
        raise AssertionError(f"{key} never acknowledged")

    async def wait_all_terminal(self, *, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with_db = None
            try:
                with_db = await asyncpg.connect(self.dsn)
                left = await with_db.fetchval(
                    "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'canceled')"
                )
                if left == 0:
                    return
            except (OSError, asyncpg.PostgresError):
                pass
            finally:
                if with_db is not None:
                    await with_db.close()
            await asyncio.sleep(0.5)  # polling another process's progress, bounded by the deadline

    async def configure_sims(self, names: list[str], patch: dict[str, Any]) -> None:
        async with httpx.AsyncClient() as client:
            for name in names:
                response = await client.post(f"{self.sims[name]}/_sim/config", json=patch)
                response.raise_for_status()

    async def sim_records(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = []
        async with httpx.AsyncClient() as client:
            for url in self.sims.values():
                jobs += (await client.get(f"{url}/_sim/jobs")).json()["jobs"]
                stats = (await client.get(f"{url}/_sim/stats")).json()
                for name in ("callbacks_dropped", "callbacks_duplicated", "rate_limited", "server_errors",
                             "callbacks_failed", "jobs_failed", "abandoned_requests"):  # fmt: skip
                    self.tally.faults[name] += int(stats.get(name, 0))
        return jobs


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[Chaos]:
    run = Chaos(tmp_path)
    try:
        await run.start()
        yield run
    finally:
        await run.close()


async def test_nothing_lost_nothing_doubled_under_chaos(chaos: Chaos) -> None:
    await nothing_lost_nothing_doubled(chaos, jobs=JOBS, pace_s=0.2)


async def test_nothing_lost_nothing_doubled_through_pgbouncer(tmp_path: Path) -> None:
    """The same chaos with DATABASE_URL at PgBouncer in transaction mode, two server
    connections for every instance's pool, and DATABASE_LISTEN_URL at the server."""
    run = Chaos(tmp_path, pgbouncer=True)
    try:
        await run.start()
        started = time.monotonic()
        await nothing_lost_nothing_doubled(run, jobs=POOLED_JOBS, pace_s=0.4, label="pgbouncer ")
        print(
            f"pgbouncer chaos: {time.monotonic() - started:.1f} s from the first job to the tally"
        )
    finally:
        await run.close()


async def nothing_lost_nothing_doubled(
    chaos: Chaos, *, jobs: int, pace_s: float, label: str = ""
) -> None:
    """`jobs` jobs, 5 every `pace_s`, while two instances are killed and restarted and the
    database is stopped and started; then the tally, which must show nothing lost or doubled."""
    acknowledged: dict[str, str] = {}
    outage = asyncio.Event()  # PostgreSQL is down
    async with httpx.AsyncClient(base_url=chaos.balancer.url, timeout=15) as client:

        async def load() -> None:
            # Paced so that the load spans the faults below; its second half starts once the
            # database is down, so that the outage always meets clients (client_retries).
            pending = []
            for start in range(0, jobs, 5):
                if start >= jobs // 2:
                    await outage.wait()
                batch = range(start, start + 5)
                pending += [
                    asyncio.create_task(chaos.submit(client, i, acknowledged)) for i in batch
                ]
                await asyncio.sleep(pace_s)  # pacing the load, not synchronisation
            await asyncio.gather(*pending)

        async def faults() -> None:
            await asyncio.sleep(1.0)
            await chaos.kill_and_restart(0, down_s=1.0)
            await chaos.database_outage(down_s=2.0, stopped=outage)
            await chaos.kill_and_restart(1, down_s=0.5)
            await chaos.kill_and_restart(2, down_s=0.5)

        await asyncio.gather(load(), faults())
    await chaos.wait_all_terminal(within_s=120)
    sim_jobs = await chaos.sim_records()
    await audit(chaos.dsn, acknowledged=acknowledged, sim_jobs=sim_jobs, tally=chaos.tally)
    print("\n" + label + chaos.tally.line())
    if chaos.tally.not_terminal:
        for instance in chaos.instances:
            print(instance.name, instance.tail())
    assert len(acknowledged) == jobs
    assert chaos.tally.jobs == jobs
    assert chaos.tally.lost == []
    assert chaos.tally.not_terminal == []
    assert chaos.tally.submitted_twice == []
    assert chaos.tally.duplicate_transitions == []
    assert chaos.tally.seq_gaps == []
    assert chaos.tally.archived_twice == []
    assert chaos.tally.faults["instance_kill9"] == 3
    assert chaos.tally.faults["client_retries"] > 0  # the faults did hit the clients
    assert chaos.tally.faults["callbacks_dropped"] > 0


async def test_a_single_instance_recovers_every_job_after_kill_9(tmp_path: Path) -> None:
    """kill -9 of the only instance while jobs are in every state, some claimed but not yet
    sent and some mid-submission: after a restart every job ends, none is sent twice, the
    unsent ones are sent and Scenario's are polled again."""
    run = Chaos(tmp_path, instances=1, faults=CLEAN, extra_env={"PROVIDER_CONCURRENCY": "2"})
    try:
        await run.start()
        async with httpx.AsyncClient() as client:
            for url in run.sims.values():  # slow answers keep submissions in flight at the kill
                await client.post(f"{url}/_sim/config", json={"slow_seconds": 0.3})
        acknowledged: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=run.balancer.url, timeout=15) as client:
            await asyncio.gather(*(run.submit(client, i, acknowledged) for i in range(45)))
        conn = await asyncpg.connect(run.dsn)
        try:
            # Wait until the instance is mid-work: some jobs at the provider, some not yet sent.
            # Another process's progress: no event reaches this one, so it is polled.
            while (  # noqa: ASYNC110
                await conn.fetchval("SELECT count(*) FROM jobs WHERE submitted_at IS NOT NULL") < 6
            ):
                await asyncio.sleep(0.05)
            run.instances[0].kill9()
            at_kill = {r["status"] + (":started" if r["started"] else "") for r in await conn.fetch(
                "SELECT status, submit_started_at IS NOT NULL AS started FROM jobs")}  # fmt: skip
            unsent = {r["id"] for r in await conn.fetch(
                "SELECT id FROM jobs WHERE status = 'accepted' AND submit_started_at IS NULL")}  # fmt: skip
        finally:
            await conn.close()
        assert "accepted" in at_kill and unsent  # claimed or due, but not sent
        assert at_kill & {
            "submitted:started",
            "queued:started",
            "running:started",
            "succeeded:started",
        }
        run.instances[0].start()
        await run.instances[0].ready()
        await run.wait_all_terminal(within_s=90)
        await audit(
            run.dsn, acknowledged=acknowledged, sim_jobs=await run.sim_records(), tally=run.tally
        )
        print("\ncrash recovery " + run.tally.line())
        assert run.tally.not_terminal == []
        assert run.tally.submitted_twice == []
        assert run.tally.duplicate_transitions == []
        conn = await asyncpg.connect(run.dsn)
        try:
            unsent_outcomes = {
                r["status"]
                for r in await conn.fetch(
                    "SELECT status FROM jobs WHERE id = ANY($1)", list(unsent)
                )
            }
        finally:
            await conn.close()
        assert unsent_outcomes == {"succeeded"}  # sent after the restart, and finished
    finally:
        await run.close()


async def test_a_crash_right_after_a_burst_strands_nothing(tmp_path: Path) -> None:
    """30 jobs at once (10 per provider, ~4 s each at the provider), kill -9 of the only
    instance as soon as the first submission has started, then a restart: every job ends, no
    provider gets any job twice, and every Krea and Scenario job that had not reached its
    provider before the kill is sent after the restart and succeeds (their job lists show they
    never arrived); fal, which lists nothing, waits for callbacks only as long as it may.
    Until the kill, Krea and Scenario answer every request 429 (`max_concurrent_requests` 0), so
    none of their jobs can reach them first, however the machine schedules the kill."""
    # Providers retry a webhook for a while (the simulators' default gives up after a few
    # seconds): the one job that reached its provider before the kill must still call back once
    # the instance is up again, however slowly a loaded machine restarts it. A lost callback
    # would leave the other Krea jobs of its window unattributable (give_up after 15 s): the
    # designed answer to a lost callback (tests/acceptance/test_submission_faults.py), not what
    # this test is about. Seen once in CI: the restart outlasted the default retries.
    retrying = {"callback_max_attempts": 60, "callback_retry_max_seconds": 1.0}
    # The jobs' hard timeouts (90 s in chaos runs) well beyond the test: on one loaded core the
    # burst, the kill and the restart took longer than 90 s, and every job ended
    # provider_timeout, rightly but beside this test's point.
    deadlines = {f"{p.upper()}_JOB_TIMEOUT_S": "900" for p in ("krea", "fal", "scenario")}
    run = Chaos(tmp_path, instances=1, extra_env=deadlines,
                faults={**CLEAN, "queue_seconds": 1.0, "run_seconds": 3.0, **retrying})  # fmt: skip
    try:
        await run.start()
        acknowledged: dict[str, str] = {}
        conn = await asyncpg.connect(run.dsn)
        try:
            await run.configure_sims(["krea", "scenario"], {"max_concurrent_requests": 0})
            async with httpx.AsyncClient(base_url=run.balancer.url, timeout=15) as client:
                burst = asyncio.gather(*(run.submit(client, i, acknowledged) for i in range(30)))
                # Another process's progress: no event reaches this one, so it is polled.
                while not await conn.fetchval(  # noqa: ASYNC110
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE submit_started_at IS NOT NULL)"
                ):
                    await asyncio.sleep(0.005)
                run.instances[0].kill9()
                await asyncio.gather(burst, return_exceptions=True)
            reached = {
                job["prompt"].rsplit("#", 1)[-1] for job in await run.sim_records()
            }  # what the providers hold once the killed instance can send nothing more
            await run.configure_sims(["krea", "scenario"], {"max_concurrent_requests": None})
            # The burst's answers may have been cut by the kill: the client retries the rest.
            async with httpx.AsyncClient(base_url=run.balancer.url, timeout=15) as client:
                run.instances[0].start()
                await run.instances[0].ready()
                await asyncio.gather(
                    *(run.submit(client, i, acknowledged) for i in range(30)
                      if f"chaos-{i:04d}" not in acknowledged)
                )  # fmt: skip
            started = time.monotonic()
            await run.wait_all_terminal(within_s=150)
            took = time.monotonic() - started
            rows = await conn.fetch(
                "SELECT idempotency_key AS key, provider, status, error->>'code' AS code FROM jobs"
            )
        finally:
            await conn.close()
        sim_jobs = await run.sim_records()
        await audit(run.dsn, acknowledged=acknowledged, sim_jobs=sim_jobs, tally=run.tally)
        print(f"\nburst crash: reached before the kill={len(reached)}, all terminal after "
              f"{took:.1f} s; " + run.tally.line())  # fmt: skip
        assert len(rows) == 30
        assert run.tally.not_terminal == []
        assert run.tally.submitted_twice == []
        assert run.tally.duplicate_transitions == []
        never_reached = [r for r in rows if r["provider"] != "fal" and r["key"] not in reached]
        assert len(never_reached) == 20  # none of the Krea and Scenario jobs got in first
        assert {(r["key"], r["status"]) for r in never_reached} == {
            (r["key"], "succeeded") for r in never_reached
        }
        held = {job["prompt"].rsplit("#", 1)[-1] for job in sim_jobs}
        assert {r["key"] for r in never_reached} <= held  # sent after the restart
        for r in rows:  # fal's unsent jobs end with a clear code, never stranded
            assert r["status"] == "succeeded" or r["code"] == "submission_outcome_unknown", r
    finally:
        await run.close()


async def test_a_routed_run_with_one_provider_failing_midway(tmp_path: Path) -> None:
    """60 routed jobs (`flux-1-krea-dev` on fal, then Scenario) on two instances; a second into
    the load every fal job starts failing (not for its content) and one instance is killed with
    SIGKILL and restarted. Every job ends, none is lost, no provider gets any job twice, and no
    job ever has two attempts that are not over: each moved on only after its fal attempt
    failed."""
    retrying = {"callback_max_attempts": 60, "callback_retry_max_seconds": 1.0}
    run = Chaos(tmp_path, instances=2, faults={**CLEAN, **retrying},
                extra_env={"SUBMISSION_BIND_WAIT_S": "5"})  # fmt: skip
    jobs = 60
    try:
        await run.start()
        acknowledged: dict[str, str] = {}

        async def submit(client: httpx.AsyncClient, i: int) -> None:
            key = f"routed-{i:04d}"
            body = {"provider": "auto", "model": "flux-1-krea-dev",
                    "input": {"prompt": f"a harbour #{key}", "width": 1024, "height": 1024}}  # fmt: skip
            for _ in range(300):
                try:
                    response = await client.post(
                        "/v1/jobs", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code in (200, 202):
                    acknowledged[key] = response.json()["id"]
                    return
                run.tally.faults["client_retries"] += 1
                await asyncio.sleep(0.1)  # a client's backoff before retrying
            raise AssertionError(f"{key} never acknowledged")

        async with httpx.AsyncClient(base_url=run.balancer.url, timeout=15) as client:

            async def load() -> None:
                pending = []
                for start in range(0, jobs, 4):
                    pending += [
                        asyncio.create_task(submit(client, i)) for i in range(start, start + 4)
                    ]
                    await asyncio.sleep(0.2)  # pacing the load (20 jobs/s), not synchronisation
                await asyncio.gather(*pending)

            async def faults() -> None:
                await asyncio.sleep(1.0)  # a second of healthy fal first
                response = await client.post(
                    f"{run.sims['fal']}/_sim/config", json={"fail_rate": 1.0}
                )
                assert response.status_code == 200
                await run.kill_and_restart(0, down_s=0.5)

            await asyncio.gather(load(), faults())
        await run.wait_all_terminal(within_s=120)
        await audit(run.dsn, acknowledged=acknowledged, sim_jobs=[], tally=run.tally)
        held: dict[str, Counter[str]] = {}
        async with httpx.AsyncClient() as client:
            for provider in ("fal", "scenario"):
                records = (await client.get(f"{run.sims[provider]}/_sim/jobs")).json()["jobs"]
                held[provider] = Counter(r["prompt"].rsplit("#", 1)[-1] for r in records)
        conn = await asyncpg.connect(run.dsn)
        try:
            attempts = await conn.fetch(
                "SELECT job_id, array_agg(provider || ':' || status ORDER BY n) AS tried "
                "FROM job_attempts GROUP BY job_id"
            )
            outcomes = Counter(
                f"{r['status']}:{r['code']}"
                for r in await conn.fetch("SELECT status, error->>'code' AS code FROM jobs")
            )
        finally:
            await conn.close()
        paths = Counter(" -> ".join(r["tried"]) for r in attempts)
        print(f"\nrouted chaos: attempts {dict(paths)}; outcomes {dict(outcomes)}; "
              + run.tally.line())  # fmt: skip
        assert len(acknowledged) == jobs and run.tally.jobs == jobs
        assert run.tally.lost == [] and run.tally.not_terminal == []
        assert run.tally.duplicate_transitions == [] and run.tally.seq_gaps == []
        for provider, per_key in held.items():
            assert [k for k, n in per_key.items() if n > 1] == [], provider  # never twice
        for row in attempts:  # every attempt but the last is over (failed) before the next
            assert all(t.endswith(":failed") for t in row["tried"][:-1]), row
        assert any(len(r["tried"]) == 2 for r in attempts)  # the failure did move jobs on
        assert any(r["tried"] == ["fal:succeeded"] for r in attempts)  # fal worked before
    finally:
        await run.close()
