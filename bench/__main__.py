"""`make bench` / `python -m bench`: starts everything on this machine (PostgreSQL with its
durable defaults, the provider simulators, the trivial handler) and measures the service as the
contract deploys it: one `python -m service serve` with its defaults, then the same with
WEB_CONCURRENCY=2 (and, for intake, the split API/worker deployment), each figure beside its
baseline in the same run, so the ratios hold on a noisy machine. Prints a table and writes
bench-results/latest.json and bench-results/latest.md."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from bench.loadgen import Request, Result, closed_loop, fixed_rate, percentile
from bench.stack import REPO, Deployment, Stack, cpu_seconds

OUT = REPO / "bench-results"
RATE = 500  # the "at 500/s" figures

DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "serve": {"processes": 1},
    "serve-x2": {"processes": 2},
    "split": {"split": True},  # an API instance and a worker instance: an extra row, intake only
}
PER_DEPLOYMENT = ("intake", "stream", "submit", "requests", "wake", "polling")
SPLIT_SECTIONS = ("intake",)


@dataclass
class Figure:
    deployment: str
    section: str
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class Bench:
    quick: bool
    stack: Stack
    figures: list[Figure] = field(default_factory=list)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def add(self, deployment: Deployment | str, *args: Any, **kwargs: Any) -> None:
        name = deployment if isinstance(deployment, str) else deployment.name
        figure = Figure(name, *args, **kwargs)
        self.figures.append(figure)
        ratio = f"  ratio {figure.ratio:.2f}" if figure.ratio is not None else ""
        base = (
            f"  (baseline {figure.baseline_name}: {figure.baseline:.1f})"
            if figure.baseline is not None
            else ""
        )
        print(
            f"  {figure.deployment:<9} {figure.section:<9} {figure.name:<46} {figure.value:>9.1f} {figure.unit:<8}{base}{ratio}",
            flush=True,
        )


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    deltas = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = deltas[-1][1] if deltas else 0
    if total <= 0:
        return float("nan")
    for le, count in deltas:
        if count >= q * total:
            return le
    return float("inf")


# --- the figures ------------------------------------------------------------------------------


async def intake(bench: Bench, dep: Deployment) -> None:
    print(f"\n[{dep.name}] 1. Durable callback intake at saturation (64 connections; Krea + signed fal, one staged job per callback)",
          flush=True)  # fmt: skip
    n = bench.n(24000, 6000)
    requests = await bench.stack.callbacks(dep, n)
    stack = bench.stack
    trivial_pids, pg_pids = stack.trivial.pids(), stack.postgres_pids()
    cpu0 = cpu_seconds(trivial_pids)
    trivial = await closed_loop(stack.trivial_url, requests, concurrency=64)
    trivial_cpu = cpu_seconds(trivial_pids) - cpu0
    ours_pids = dep.pids()
    cpu0, pg0 = cpu_seconds(ours_pids), cpu_seconds(pg_pids)
    ours = await closed_loop(dep.url, requests, concurrency=64)
    ours_cpu, pg_cpu = cpu_seconds(ours_pids) - cpu0, cpu_seconds(pg_pids) - pg0
    assert ours.errors == 0, ours.statuses
    bench.add(dep, "intake", "saturation throughput", ours.throughput, "req/s",
              "trivial handler", trivial.throughput, ">= 0.45 x trivial")  # fmt: skip
    bench.add(
        dep, "intake", "saturation ack p50", ours.p(50), "ms", "trivial handler", trivial.p(50)
    )
    bench.add(dep, "intake", "saturation ack p99", ours.p(99), "ms", "trivial handler", trivial.p(99),
              "<= 50 ms")  # fmt: skip
    # CPU per request, the measure a shared machine does not blur: the service's processes,
    # and PostgreSQL's, against the trivial handler's.
    bench.add(dep, "intake", "service CPU per callback", ours_cpu / n * 1e6, "us",
              "trivial handler CPU per request", trivial_cpu / n * 1e6)  # fmt: skip
    bench.add(dep, "intake", "PostgreSQL CPU per callback", pg_cpu / n * 1e6, "us")
    print(f"    statuses {ours.statuses} (each answered after its commit)", flush=True)


async def callback_to_client(bench: Bench, dep: Deployment) -> None:
    print(f"\n[{dep.name}] 2. Callback sent -> server-sent event received, at {RATE}/s", flush=True)
    n = bench.n(RATE * 5, RATE * 2)
    job_ids = await dep.seed_submitted("krea", "bfl/flux-1-dev", n)
    requests = {j: bench.stack.callback("krea", j) for j in job_ids}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def listen(ready: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{dep.url}/v1/events/stream",
                                                                  timeout=aiohttp.ClientTimeout(total=None)) as response:  # fmt: skip
            ready.set()
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if not line.startswith("data: "):
                    continue
                received = time.perf_counter()
                event = orjson.loads(line[6:])
                if event["to_status"] == "succeeded" and event["job_id"] in sent_at:
                    latencies.append((received - sent_at[event["job_id"]]) * 1000)
                    if len(latencies) == n:
                        done.set()
                        return

    ready = asyncio.Event()
    listener = asyncio.create_task(listen(ready))
    await ready.wait()
    ack = Result()
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        tasks = []
        for i, job_id in enumerate(job_ids):
            due = start + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[job_id] = time.perf_counter()
            request = requests[job_id]

            async def post(request: Request = request, t0: float = sent_at[job_id]) -> None:
                async with session.post(
                    dep.url + request.path, data=request.body, headers=request.headers
                ) as r:
                    await r.read()
                    ack.latencies_ms.append((time.perf_counter() - t0) * 1000)

            tasks.append(asyncio.create_task(post()))
        await asyncio.gather(*tasks)
    await asyncio.wait_for(done.wait(), 30)
    listener.cancel()
    bench.add(dep, "stream", f"callback -> SSE client p50 at {RATE}/s", percentile(latencies, 50), "ms",
              "callback ack p50", ack.p(50), "<= 3 ms")  # fmt: skip
    bench.add(dep, "stream", f"callback -> SSE client p99 at {RATE}/s", percentile(latencies, 99), "ms",
              "callback ack p99", ack.p(99), "<= 25 ms")  # fmt: skip


async def submission(bench: Bench, dep: Deployment) -> None:
    print(f"\n[{dep.name}] 3. POST /v1/jobs at {RATE}/s (fal jobs of 0.7 s: submissions and webhooks run behind)",
          flush=True)  # fmt: skip
    await bench.stack.sim("fal", "POST", "/_sim/config", {"queue_seconds": 0.2, "run_seconds": 0.5})
    n = bench.n(RATE * 5, RATE * 2)
    body = orjson.dumps(
        {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "a lighthouse"}}
    )
    requests = [
        Request("POST", "/v1/jobs", body, {"Content-Type": "application/json"}) for _ in range(n)
    ]
    trivial = await fixed_rate(bench.stack.trivial_url, requests, rate=RATE)
    ours = await fixed_rate(dep.url, requests, rate=RATE)
    assert ours.errors == 0, ours.statuses
    bench.add(
        dep,
        "submit",
        f"POST /v1/jobs p50 at {RATE}/s",
        ours.p(50),
        "ms",
        "trivial handler",
        trivial.p(50),
    )
    bench.add(dep, "submit", f"POST /v1/jobs p99 at {RATE}/s", ours.p(99), "ms", "trivial handler", trivial.p(99),
              "<= 20 ms")  # fmt: skip


async def provider_requests(bench: Bench, dep: Deployment) -> None:
    """Jobs of 7 s (0.5 s queued + 6.5 s running): Scenario polled, fal by webhook."""
    print(f"\n[{dep.name}] 5. Requests to the provider per completed job (7 s jobs)", flush=True)
    job_s = 7.0
    for provider in ("fal", "scenario"):
        await bench.stack.sim(
            provider, "POST", "/_sim/config", {"queue_seconds": 0.5, "run_seconds": job_s - 0.5}
        )
    n = bench.n(30, 10)
    models = {"fal": "fal-ai/flux/krea", "scenario": "model_flux-krea-dev"}
    # The model's history first: Scenario's jobs are polled near the model's observed completion
    # time once it has 20 recent successes (GraceRule.min_samples); a bench database starts
    # empty. These 20 are the "no history" figures.
    cold_before = (await bench.stack.sim("scenario", "GET", "/_sim/stats"))["status_requests"]
    async with aiohttp.ClientSession() as session:
        cold = []
        for _ in range(20):
            async with session.post(f"{dep.url}/v1/jobs", json={"provider": "scenario", "model": models["scenario"],
                                                                "input": {"prompt": "x"}}) as r:  # fmt: skip
                cold.append((await r.json())["id"])
    await dep.wait_terminal(cold)
    cold_requests = (await bench.stack.sim("scenario", "GET", "/_sim/stats"))[
        "status_requests"
    ] - cold_before
    cold_noticed = await noticed_after(bench, dep, "scenario", cold, job_s)
    bench.add(dep, "requests", "scenario 7 s job, no history: status requests per job",
              cold_requests / len(cold), "req/job")  # fmt: skip
    bench.add(dep, "requests", "scenario 7 s job, no history: completion noticed after (median)",
              statistics.median(cold_noticed), "s")  # fmt: skip
    before = {
        p: (await bench.stack.sim(p, "GET", "/_sim/stats"))["status_requests"]
        for p in ("fal", "scenario")
    }
    ids: dict[str, list[str]] = {"fal": [], "scenario": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            for provider, model in models.items():
                async with session.post(f"{dep.url}/v1/jobs", json={"provider": provider, "model": model,
                                                                    "input": {"prompt": "x"}}) as r:  # fmt: skip
                    ids[provider].append((await r.json())["id"])
    await dep.wait_terminal(ids["fal"] + ids["scenario"])
    per_job = {
        p: ((await bench.stack.sim(p, "GET", "/_sim/stats"))["status_requests"] - before[p]) / n
        for p in ("fal", "scenario")
    }
    # When the provider finished vs when the service knew: the simulator's creation time plus
    # the job's length, against the job's completed_at (both wall clocks of this machine).
    # Baseline: the same for fal's jobs of the same run, whose news comes by webhook.
    noticed = {p: await noticed_after(bench, dep, p, ids[p], job_s) for p in ("fal", "scenario")}
    bench.add(
        dep,
        "requests",
        "fal: status requests per job",
        per_job["fal"],
        "req/job",
        target="0 (webhook)",
    )
    bench.add(dep, "requests", "scenario 7 s job: status requests per job", per_job["scenario"], "req/job",
              "a 0.1 s polling loop", job_s / 0.1 + 1, "<= 7")  # fmt: skip
    bench.add(dep, "requests", "scenario 7 s job: completion noticed after (median)",
              statistics.median(noticed["scenario"]), "s", "fal's, by webhook (median)",
              statistics.median(noticed["fal"]), "<= 1 s")  # fmt: skip


async def noticed_after(
    bench: Bench, dep: Deployment, provider: str, job_ids: list[str], job_s: float
) -> list[float]:
    """Seconds from each job's end at the simulator to its completed_at in the service."""
    sim_jobs = {j["id"]: j for j in (await bench.stack.sim(provider, "GET", "/_sim/jobs"))["jobs"]}
    rows = await dep.conn.fetch(
        "SELECT provider_job_id, completed_at FROM jobs WHERE id = ANY($1::text[])", job_ids
    )
    delays = []
    for row in rows:
        created = datetime.fromisoformat(
            sim_jobs[row["provider_job_id"]]["created_at"].replace("Z", "+00:00")
        )
        delays.append((row["completed_at"] - created).total_seconds() - job_s)
    return delays


async def wake(bench: Bench, dep: Deployment) -> None:
    """A job posted to the API is claimed by a job runner: time from its commit to its
    submission's start (both database clocks), jobs posted one at a time."""
    print(f"\n[{dep.name}] 6. Wake: new job -> a runner claims it (NOTIFY jobs_due)", flush=True)
    n = bench.n(60, 20)
    body = {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "wake"}}
    ids = []
    async with httpx.AsyncClient(base_url=dep.url, timeout=10) as client:
        for _ in range(n):
            response = await client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            await asyncio.sleep(0.05)  # pacing: one job at a time, the runner otherwise idle
    await dep.wait_terminal(ids)
    rows = await dep.conn.fetch(
        """SELECT extract(epoch FROM min(e.created_at) - j.created_at) * 1000 AS ms
           FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'submission_started'
           WHERE j.id = ANY($1) GROUP BY j.id, j.created_at""",
        ids,
    )
    lags = sorted(float(r["ms"]) for r in rows)
    assert len(lags) == n
    bench.add(dep, "wake", "new job -> a runner claims it, median", statistics.median(lags), "ms",
              target="<= 50 ms", note=f"p99 {percentile(lags, 99):.1f} ms")  # fmt: skip


async def polling(bench: Bench, dep: Deployment, in_flight: int) -> None:
    print(f"\n[{dep.name}] 4. Polling at scale: {in_flight} in-flight Scenario jobs", flush=True)
    created = await bench.stack.sim("scenario", "POST", "/_sim/bulk_jobs",
                                    {"count": in_flight, "queue_seconds": 3600, "run_seconds": 3600})  # fmt: skip
    ids = await dep.seed_submitted("scenario", "model_flux-krea-dev", in_flight,
                                   provider_ids=created["job_ids"], due_within_s=2.0)  # fmt: skip
    await asyncio.sleep(3)  # warm-up: the first round of polls is due within 2 s
    # Polls counted by the simulator (every process's requests); the due-time lag is a
    # histogram of the process that answers /metrics, so it is read with one process only.
    polls0 = (await bench.stack.sim("scenario", "GET", "/_sim/stats"))["status_requests"]
    lag0 = await dep.histogram("runner_due_lag_seconds", provider="scenario")
    window = bench.n(10, 5)
    await asyncio.sleep(window)  # the measurement window
    polls1 = (await bench.stack.sim("scenario", "GET", "/_sim/stats"))["status_requests"]
    lag1 = await dep.histogram("runner_due_lag_seconds", provider="scenario")
    rss = dep.workers.rss_mib()
    await dep.conn.execute(
        # Rows locked in id order, as the service's batches lock them (no deadlock with them).
        "UPDATE jobs SET status = 'canceled', next_action_at = NULL WHERE id IN "
        "(SELECT id FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE)",
        ids,
    )
    # Baseline: the simulator's own ceiling, status requests for the same jobs from a plain
    # client loop as concurrent as the runner (PROVIDER_CONCURRENCY, 32), the service's polls
    # stopped (the jobs canceled above).
    basic = base64.b64encode(b"sim-scenario-key:sim-scenario-secret").decode()
    plain = [Request("GET", f"/v1/jobs/{pid}", b"", {"Authorization": f"Basic {basic}"})
             for pid in created["job_ids"][: bench.n(10_000, 3_000)]]  # fmt: skip
    ceiling = await closed_loop(bench.stack.sims["scenario"], plain, concurrency=32)
    bench.add(dep, "polling", f"{in_flight} in flight: polls/s", (polls1 - polls0) / window, "polls/s",
              "simulator answering a 32-wide client loop", ceiling.throughput, ">= 5000/s at 10,000")  # fmt: skip
    if dep.processes == 1:
        bench.add(dep, "polling", f"{in_flight} in flight: due-time lag p99", histogram_quantile(lag0, lag1, 0.99),
                  "s", target="< 1 s at 10,000", note="upper bound of the histogram bucket")  # fmt: skip
    bench.add(dep, "polling", f"{in_flight} in flight: resident memory (all processes)", rss, "MiB",
              target="< 1024 MiB at 100,000")  # fmt: skip


SEALER_LOCK = 7428061944  # sql/queries/audit.sql, audit_try_lock


async def audit_chain(bench: Bench, dep: Deployment) -> None:
    """The audit chain's cost: the same saturated intake with every sealer held off (the bench
    holds the sealers' advisory lock, so they skip) and with them sealing, in one run; the
    sealing rate on the backlog left by the first; how long events wait for their seal."""
    print(f"\n[{dep.name}] 7. Audit chain: intake with and without the sealer, sealing rate, seal delay",
          flush=True)  # fmt: skip
    n = bench.n(24000, 6000)
    # Settle whatever earlier sections left unsealed, so each run starts from a sealed log.
    await _sealed_through(
        dep, int(await dep.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    )
    # Alternating rounds (held off, running, held off, running), so neither side gets the
    # warmer machine or the emptier database: the figures are each side's mean and worst p99.
    rounds = bench.n(2, 1)
    without: list[Any] = []
    with_chain: list[Any] = []
    backlog = 0
    drain_s = 0.0
    for _ in range(rounds):
        await dep.conn.execute("SELECT pg_advisory_lock($1)", SEALER_LOCK)
        try:
            without.append(
                await closed_loop(dep.url, await bench.stack.callbacks(dep, n), concurrency=64)
            )
        finally:
            await dep.conn.execute("SELECT pg_advisory_unlock($1)", SEALER_LOCK)
        backlog_end = int(await dep.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
        backlog += int(await dep.conn.fetchval(
            "SELECT count(*) FROM job_events e WHERE NOT EXISTS (SELECT 1 FROM event_seals s WHERE s.event_id = e.id)"))  # fmt: skip
        started = time.perf_counter()
        await _sealed_through(dep, backlog_end)
        drain_s += time.perf_counter() - started
        with_chain.append(
            await closed_loop(dep.url, await bench.stack.callbacks(dep, n), concurrency=64)
        )
    for result in (*without, *with_chain):
        assert result.errors == 0, result.statuses
    bench.add(dep, "audit", "intake throughput, sealer running",
              sum(r.throughput for r in with_chain) / rounds, "req/s", "sealer held off",
              sum(r.throughput for r in without) / rounds)  # fmt: skip
    bench.add(dep, "audit", "intake ack p99, sealer running", max(r.p(99) for r in with_chain),
              "ms", "sealer held off", max(r.p(99) for r in without))  # fmt: skip
    bench.add(dep, "audit", "sealing rate on a backlog", backlog / drain_s, "events/s",
              note=f"{backlog} events sealed in {drain_s:.2f} s")  # fmt: skip
    first = int(await dep.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    requests = await bench.stack.callbacks(dep, RATE * bench.n(10, 4))
    await fixed_rate(dep.url, requests, rate=RATE)
    last = int(await dep.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    await _sealed_through(dep, last)
    row = await dep.conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99
           FROM (SELECT extract(epoch FROM s.sealed_at - e.created_at) * 1000 AS d
                 FROM job_events e JOIN event_seals s ON s.event_id = e.id
                 WHERE e.id > $1 AND e.id <= $2) t""", first, last)  # fmt: skip
    bench.add(
        dep,
        "audit",
        f"commit -> sealed at {RATE}/s, p50",
        row["p50"],
        "ms",
        target="within a second",
    )
    bench.add(
        dep,
        "audit",
        f"commit -> sealed at {RATE}/s, p99",
        row["p99"],
        "ms",
        target="within a second",
    )


async def _sealed_through(dep: Deployment, event_id: int, *, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while await dep.conn.fetchval("SELECT coalesce(max(event_id), 0) FROM event_seals") < event_id:
        if time.monotonic() > deadline:
            raise TimeoutError(f"events up to {event_id} not sealed within {within_s} s")
        await asyncio.sleep(0.01)


async def archive(bench: Bench) -> None:
    """The archiver's cost: jobs per second end to end (posted, run at the provider, and
    archived) with OUTPUT_STORE_URL=none against the folder store, each phase a `serve` of its
    own; and how long after a job's success its outputs are archived."""
    print(
        "\n[serve] 8. Archived outputs: success -> archived; jobs/s end to end, none vs folder",
        flush=True,
    )
    n = bench.n(600, 150)
    store = f"file://{bench.stack.logs / 'outputs'}"
    none_rate, _ = await archive_phase(bench, "none", n)
    folder_rate, lags = await archive_phase(bench, store, n)
    _, idle_lags = await archive_phase(bench, store, bench.n(60, 20), pace_s=0.05)
    bench.add("serve", "archive", f"job success -> all outputs archived, {n} at once, median", statistics.median(lags),
              "ms", note=f"{n} jobs posted at once; outputs are the simulators' small images")  # fmt: skip
    bench.add(
        "serve",
        "archive",
        f"job success -> all outputs archived, {n} at once, p99",
        percentile(lags, 99),
        "ms",
    )
    bench.add("serve", "archive", f"{n} jobs end to end, folder store", folder_rate, "jobs/s",
              "OUTPUT_STORE_URL=none", none_rate)  # fmt: skip
    bench.add("serve", "archive", "job success -> all outputs archived, one job at a time, median",
              statistics.median(idle_lags), "ms", note=f"p99 {percentile(idle_lags, 99):.1f} ms")  # fmt: skip


async def archive_phase(
    bench: Bench, store: str, n: int, *, pace_s: float | None = None
) -> tuple[float, list[float]]:
    """n jobs (Krea, fal, Scenario in turn) posted to a new `serve` archiving into `store`, all
    at once or one every `pace_s`: (jobs/s from the first post to the last job done, and each
    job's time from success to its last output archived in ms)."""
    label = "none" if store == "none" else "folder"
    dep = await bench.stack.deploy(
        f"archive-{label}-{n}", OUTPUT_STORE_URL=store, OUTPUT_FETCH_ALLOW_PRIVATE="true"
    )
    try:
        for provider in ("krea", "fal", "scenario"):
            await bench.stack.sim(
                provider, "POST", "/_sim/config", {"queue_seconds": 0.2, "run_seconds": 0.5}
            )
        models = [
            ("krea", "bfl/flux-1-dev"),
            ("fal", "fal-ai/flux/krea"),
            ("scenario", "model_flux-krea-dev"),
        ]
        limit = asyncio.Semaphore(64)
        async with aiohttp.ClientSession() as session:

            async def post(i: int) -> str:
                provider, model = models[i % len(models)]
                body = {"provider": provider, "model": model, "input": {"prompt": f"archive {i}"}}
                async with limit, session.post(f"{dep.url}/v1/jobs", json=body) as response:
                    assert response.status == 202, await response.text()
                    job_id: str = (await response.json())["id"]
                    return job_id

            started = time.perf_counter()
            if pace_s is None:
                ids = list(await asyncio.gather(*(post(i) for i in range(n))))
            else:
                ids = []
                for i in range(n):
                    ids.append(await post(i))
                    await asyncio.sleep(
                        pace_s
                    )  # pacing: one job at a time, the worker otherwise idle
            await dep.wait_terminal(ids)
            if store != "none":
                await dep.wait_archived(ids)
            elapsed = time.perf_counter() - started
        rows = await dep.conn.fetch(
            """SELECT extract(epoch FROM max(e.created_at) - j.completed_at) * 1000 AS ms
               FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'output_archived'
               WHERE j.id = ANY($1::text[]) GROUP BY j.id, j.completed_at""",
            ids,
        )
    finally:
        await bench.stack.undeploy(dep)
    return n / elapsed, [float(r["ms"]) for r in rows]


# --- the report -------------------------------------------------------------------------------


def write_report(bench: Bench, started: datetime) -> None:
    OUT.mkdir(exist_ok=True)
    machine = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }  # fmt: skip
    data = {"started": started.isoformat(), "machine": machine, "quick": bench.quick,
            "figures": [{**f.__dict__, "ratio": f.ratio} for f in bench.figures]}  # fmt: skip
    (OUT / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"Run {started:%Y-%m-%d %H:%M} UTC on {machine['cpus']} CPUs, {machine['memory_gib']} GiB, Python {machine['python']}"
             f"{' (--quick)' if bench.quick else ''}",
             "", "| deployment | section | figure | value | baseline (same run) | ratio | target |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in bench.figures:
        base = f"{f.baseline:,.1f} ({f.baseline_name})" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        note = f" ({f.note})" if f.note else ""
        lines.append(
            f"| {f.deployment} | {f.section} | {f.name}{note} | {f.value:,.1f} {f.unit} | {base} | {ratio} | {f.target} |"
        )
    (OUT / "latest.md").write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {OUT / 'latest.json'}, {OUT / 'latest.md'}")


async def run_deployment(
    bench: Bench, name: str, sections: list[str], options: dict[str, Any]
) -> None:
    wanted = [s for s in PER_DEPLOYMENT if s in sections]
    if options.get("split"):
        wanted = [s for s in wanted if s in SPLIT_SECTIONS]
    if options.get("processes") == 1 and "audit" in sections:  # the single serve only
        wanted.append("audit")
    if not wanted:
        return
    print(f"\n=== {name}: {options} ===", flush=True)
    dep = await bench.stack.deploy(name, **options)
    try:
        for section in wanted:
            if section == "intake":
                await intake(bench, dep)
            elif section == "stream":
                await callback_to_client(bench, dep)
            elif section == "submit":
                await submission(bench, dep)
            elif section == "requests":
                await provider_requests(bench, dep)
            elif section == "wake":
                await wake(bench, dep)
            elif section == "polling":
                await polling(bench, dep, 10_000)
                if options.get("processes") == 1:
                    await polling(bench, dep, bench.n(100_000, 20_000))
            elif section == "audit":
                await audit_chain(bench, dep)
    finally:
        await bench.stack.undeploy(dep)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke run")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"sections: {' '.join(PER_DEPLOYMENT)} audit archive")  # fmt: skip
    parser.add_argument("--deployments", nargs="*", default=list(DEPLOYMENTS),
                        choices=list(DEPLOYMENTS), help="deployments measured (default: all)")  # fmt: skip
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="also measure each deployment with the service of this source tree "
                             "(`git archive COMMIT | tar -x -C TREE`) first: a before/after in one run")  # fmt: skip
    args = parser.parse_args()
    started = datetime.now(UTC)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bench = Bench(quick=args.quick, stack=Stack(logs=logs))
    sections = args.only or [*PER_DEPLOYMENT, "audit", "archive"]
    try:
        await bench.stack.start()
        for name in args.deployments:
            if args.before is not None:
                before = {**DEPLOYMENTS[name], "tree": args.before.resolve()}
                await run_deployment(bench, f"{name}@before", sections, before)
            await run_deployment(bench, name, sections, DEPLOYMENTS[name])
        if "archive" in sections:
            await archive(bench)
    finally:
        await bench.stack.stop()
        write_report(bench, started)


if __name__ == "__main__":
    asyncio.run(main())
