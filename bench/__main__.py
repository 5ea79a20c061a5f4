"""`make bench` / `python -m bench`: starts everything on this machine (embedded PostgreSQL with
its durable defaults, the provider simulators, the service, the baselines) and measures each
figure beside its baseline in one run, so the ratios hold on a noisy machine. Prints a table and
writes bench-results/latest.json and bench-results/latest.md."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.loadgen import Request, Result, closed_loop, fixed_rate, percentile
from service.db.embedded import EmbeddedPostgres
from service.store import new_job_id

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Child:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            args,
            env=env,
            cwd=REPO,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ready(self, url: str, *, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Figure:
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
    logs: Path
    concurrency: str = "32"  # the worker's PROVIDER_CONCURRENCY (the production default)
    figures: list[Figure] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> None:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        ratio = f"  ratio {figure.ratio:.2f}" if figure.ratio is not None else ""
        base = (
            f"  (baseline {figure.baseline_name}: {figure.baseline:.1f})"
            if figure.baseline is not None
            else ""
        )
        print(
            f"  {figure.section:<10} {figure.name:<48} {figure.value:>10.1f} {figure.unit:<8}{base}{ratio}",
            flush=True,
        )

    # --- the stack ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.pg = EmbeddedPostgres(REPO / ".data" / "bench", stop_at_exit=True)
        admin_dsn = self.pg.start()
        self.db_name = f"bench_{int(time.time())}"
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'CREATE DATABASE "{self.db_name}"')
        await admin.close()
        self.dsn = admin_dsn.replace("/postgres?", f"/{self.db_name}?")

        # fal's webhook keys: the bench signs like fal and serves the JWKS.
        self.fal_key = Ed25519PrivateKey.generate()
        x = base64.urlsafe_b64encode(
            self.fal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).rstrip(b"=")
        jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x.decode(), "kid": "bench"}]}
        self._jwks = (
            jwks  # the fal simulator's key is added once it runs (it signs its own webhooks)
        )
        app = web.Application()

        async def serve_jwks(_request: web.Request) -> web.Response:
            return web.json_response(jwks)

        app.router.add_get("/jwks.json", serve_jwks)
        self._jwks_runner = web.AppRunner(app, access_log=None)
        await self._jwks_runner.setup()
        jwks_port = free_port()
        await web.TCPSite(self._jwks_runner, "127.0.0.1", jwks_port).start()

        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        self.sim_ports = {p: free_port() for p in ("krea", "fal", "scenario")}
        self.sims = {p: f"http://127.0.0.1:{port}" for p, port in self.sim_ports.items()}
        sims = Child("simulators", [sys.executable, "-m", "simulators",
                                    "--krea-port", str(self.sim_ports["krea"]), "--fal-port", str(self.sim_ports["fal"]),
                                    "--scenario-port", str(self.sim_ports["scenario"])], env, self.logs)  # fmt: skip
        self.children.append(sims)
        await sims.ready(f"{self.sims['krea']}/_sim/stats")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.sims['fal']}/.well-known/jwks.json") as response,
        ):
            jwks["keys"] += (await response.json())["keys"]

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        def service_env(port: int, **extra: str) -> dict[str, str]:
            return {
                **env, "DATABASE_URL": self.dsn, "HOST": "127.0.0.1", "PORT": str(port),
                "PUBLIC_BASE_URL": self.url,  # providers call back the API instance
                "SERVICE_DATA_DIR": str(self.logs / f"data-{port}"),
                # Nothing archived unless a section says so (section 7 measures the archiver).
                "OUTPUT_STORE_URL": "none",
                "KREA_API_URL": self.sims["krea"], "KREA_API_TOKEN": "sim-krea-token",
                "FAL_QUEUE_URL": self.sims["fal"], "FAL_KEY": "sim-fal-key",
                "FAL_JWKS_URL": f"http://127.0.0.1:{jwks_port}/jwks.json",
                "SCENARIO_API_URL": self.sims["scenario"] + "/v1", "SCENARIO_SDK_API_KEY": "sim-scenario-key",
                "SCENARIO_SDK_API_SECRET": "sim-scenario-secret", "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
                "DB_POOL_MAX": "20", **extra,
            }  # fmt: skip

        self.service_env = service_env
        # As one would run it: an API instance (HTTP only) and a worker instance (job runner and
        # webhook delivery), both on the one database.
        self.service = Child("service-api", [sys.executable, "-m", "service", "serve"],
                             service_env(self.port, RUN_WORKERS="false"), self.logs)  # fmt: skip
        self.children.append(self.service)
        await self.service.ready(f"{self.url}/readyz")
        worker_port = free_port()
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        self.worker = Child("service-worker", [sys.executable, "-m", "service", "serve"],
                            service_env(worker_port, RUN_WORKERS="true", PROVIDER_CONCURRENCY=self.concurrency), self.logs)  # fmt: skip
        self.children.append(self.worker)
        await self.worker.ready(f"{self.worker_url}/readyz")
        naive_port = free_port()
        self.naive_url = f"http://127.0.0.1:{naive_port}"
        naive = Child("service-naive", [sys.executable, "-m", "service", "serve"],
                      service_env(naive_port, INTAKE_MAX_BATCH="1", RUN_WORKERS="false"), self.logs)  # fmt: skip
        self.children.append(naive)
        await naive.ready(f"{self.naive_url}/readyz")
        trivial_port = free_port()
        self.trivial_url = f"http://127.0.0.1:{trivial_port}"
        trivial = Child(
            "trivial", [sys.executable, "-m", "bench.trivial", str(trivial_port)], env, self.logs
        )
        self.children.append(trivial)
        await trivial.ready(f"{self.trivial_url}/")
        self.conn = await asyncpg.connect(self.dsn)

    async def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        await self._jwks_runner.cleanup()
        self.pg.close()

    async def sim(self, provider: str, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.sims[provider] + path, json=body) as response,
        ):
            return await response.json()

    # --- staging ------------------------------------------------------------------------------

    async def seed_submitted(self, provider: str, model: str, count: int, *, provider_ids: list[str] | None = None,
                             due_within_s: float | None = None) -> list[str]:  # fmt: skip
        """Jobs already at the provider (as after submission), straight into the database."""
        ids = [new_job_id() for _ in range(count)]
        await self.conn.execute(
            """INSERT INTO jobs (id, provider, model, status, input, request_hash, last_seq, provider_job_id,
                                 callback_token_hash, next_action_at, deadline_at, submitted_at)
               SELECT t.id, $2, $3, 'submitted', '{"prompt": "bench"}', 'bench', 0, t.pid,
                      encode(sha256(convert_to('tok-' || t.id, 'UTF8')), 'hex'),
                      CASE WHEN $5::float8 IS NULL THEN now() + interval '1 day'
                           ELSE now() + random() * make_interval(secs => $5::float8) END,
                      now() + interval '2 days', now()
               FROM unnest($1::text[], $4::text[]) AS t(id, pid)""",
            ids, provider, model, provider_ids or [f"p-{i}" for i in ids], due_within_s,
        )  # fmt: skip
        return ids

    def callback(self, provider: str, job_id: str) -> Request:
        path = f"/callbacks/{provider}/{job_id}/tok-{job_id}"
        pid = f"p-{job_id}"
        if provider == "krea":
            body = orjson.dumps({"job_id": pid, "status": "completed", "created_at": "2026-11-21T10:00:00.000Z",
                                 "completed_at": "2026-11-21T10:00:05.000Z",
                                 "result": {"urls": ["https://cdn.example/a.png"]}})  # fmt: skip
            return Request("POST", path, body, {"Content-Type": "application/json"})
        body = orjson.dumps({"request_id": pid, "gateway_request_id": pid, "status": "OK",
                             "payload": {"images": [{"url": "https://cdn.example/a.jpg", "content_type": "image/jpeg",
                                                     "width": 1024, "height": 768}]}})  # fmt: skip
        timestamp = str(int(time.time()))
        message = f"{pid}\nbench-user\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return Request("POST", path, body, {
            "Content-Type": "application/json", "X-Fal-Webhook-Request-Id": pid, "X-Fal-Webhook-User-Id": "bench-user",
            "X-Fal-Webhook-Timestamp": timestamp, "X-Fal-Webhook-Signature": self.fal_key.sign(message).hex(),
        })  # fmt: skip

    async def callbacks(self, count: int) -> list[Request]:
        krea = await self.seed_submitted("krea", "bfl/flux-1-dev", count // 2)
        fal = await self.seed_submitted("fal", "fal-ai/flux/krea", count - count // 2)
        requests = []
        for k, f in zip(krea, fal, strict=False):
            requests += [self.callback("krea", k), self.callback("fal", f)]
        requests += [self.callback("fal", f) for f in fal[len(krea) :]]
        return requests

    async def metric(self, name: str, **labels: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.worker_url}/metrics") as response,
        ):
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def histogram(self, name: str, **labels: str) -> dict[float, float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.worker_url}/metrics") as response,
        ):
            text = await response.text()
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket") and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                le = re.search(r'le="([^"]+)"', line)
                assert le is not None
                buckets[float(le.group(1))] = float(line.rsplit(" ", 1)[1])
        return buckets


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


async def intake(bench: Bench) -> None:
    print(
        "\n1. Durable callback intake (Krea + signed fal, one distinct job per callback)",
        flush=True,
    )
    scale = 0.25 if bench.quick else 1.0
    saturation_n = int(24000 * scale)
    trivial = await closed_loop(
        bench.trivial_url, await bench.callbacks(saturation_n), concurrency=64
    )
    ours = await closed_loop(bench.url, await bench.callbacks(saturation_n), concurrency=64)
    naive = await closed_loop(
        bench.naive_url, await bench.callbacks(int(8000 * scale)), concurrency=64
    )
    assert ours.errors == 0, ours.statuses
    bench.add("intake", "saturation throughput (batched commits)", ours.throughput, "req/s", "trivial handler",
              trivial.throughput, ">= 12000/s and >= 0.45 x trivial")  # fmt: skip
    bench.add("intake", "saturation throughput vs naive design", ours.throughput, "req/s",
              "one transaction per request", naive.throughput)  # fmt: skip
    bench.add(
        "intake", "saturation ack latency p50", ours.p(50), "ms", "trivial handler", trivial.p(50)
    )
    bench.add(
        "intake",
        "saturation ack latency p99",
        ours.p(99),
        "ms",
        "trivial handler",
        trivial.p(99),
        "<= 50 ms",
    )
    bench.add(
        "intake",
        "naive design ack latency p99",
        naive.p(99),
        "ms",
        "trivial handler",
        trivial.p(99),
    )
    for rate in (1000, 3000):
        n = int(rate * 4 * scale)
        ours_fixed = await fixed_rate(bench.url, await bench.callbacks(n), rate=rate)
        trivial_fixed = await fixed_rate(bench.trivial_url, await bench.callbacks(n), rate=rate)
        assert ours_fixed.errors == 0, ours_fixed.statuses
        bench.add(
            "intake",
            f"at {rate}/s offered: ack p50",
            ours_fixed.p(50),
            "ms",
            "trivial handler",
            trivial_fixed.p(50),
        )
        bench.add(
            "intake",
            f"at {rate}/s offered: ack p99",
            ours_fixed.p(99),
            "ms",
            "trivial handler",
            trivial_fixed.p(99),
            "<= 50 ms",
        )
    print(f"    naive statuses {naive.statuses}, ours statuses {ours.statuses}", flush=True)


SEALER_LOCK = 7428061944  # sql/queries/audit.sql, audit_try_lock


async def audit_chain(bench: Bench) -> None:
    """The audit chain's cost: the same saturated intake with every sealer held off (the bench
    holds the sealers' advisory lock, so they skip) and with them sealing, in one run; the
    sealing rate on the backlog left by the first; how long events wait for their seal."""
    print(
        "\n8. Audit chain: intake with and without the sealer, sealing rate, seal delay", flush=True
    )
    n = int(24000 * (0.25 if bench.quick else 1.0))
    # Settle whatever earlier sections left unsealed, so each run starts from a sealed log.
    await _sealed_through(
        bench, int(await bench.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    )
    # Alternating rounds (held off, running, held off, running), so neither side gets the
    # warmer machine or the emptier database: the figures are each side's totals.
    rounds = 1 if bench.quick else 2
    without: list[Any] = []
    with_chain: list[Any] = []
    backlog = 0
    drain_s = 0.0
    for _ in range(rounds):
        await bench.conn.execute("SELECT pg_advisory_lock($1)", SEALER_LOCK)
        try:
            without.append(await closed_loop(bench.url, await bench.callbacks(n), concurrency=64))
        finally:
            await bench.conn.execute("SELECT pg_advisory_unlock($1)", SEALER_LOCK)
        backlog_end = int(await bench.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
        backlog += int(await bench.conn.fetchval(
            "SELECT count(*) FROM job_events e WHERE NOT EXISTS (SELECT 1 FROM event_seals s WHERE s.event_id = e.id)"))  # fmt: skip
        started = time.perf_counter()
        await _sealed_through(bench, backlog_end)
        drain_s += time.perf_counter() - started
        with_chain.append(await closed_loop(bench.url, await bench.callbacks(n), concurrency=64))
    for result in (*without, *with_chain):
        assert result.errors == 0, result.statuses
    off_rate = sum(r.throughput for r in without) / rounds
    on_rate = sum(r.throughput for r in with_chain) / rounds
    off_p99 = max(r.p(99) for r in without)
    on_p99 = max(r.p(99) for r in with_chain)
    bench.add("audit", "intake throughput, sealer running", on_rate, "req/s",
              "sealer held off", off_rate, note=f"mean of {rounds} alternating rounds each")  # fmt: skip
    bench.add("audit", "intake ack p99, sealer running", on_p99, "ms",
              "sealer held off", off_p99, note="worst round")  # fmt: skip
    bench.add("audit", "sealing rate on a backlog", backlog / drain_s, "events/s",
              note=f"{backlog} events sealed in {drain_s:.2f} s")  # fmt: skip
    first = int(await bench.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    rate = 500
    requests = await bench.callbacks(int(rate * (4 if bench.quick else 10)))
    await fixed_rate(bench.url, requests, rate=rate)
    last = int(await bench.conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"))
    await _sealed_through(bench, last)
    row = await bench.conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99
           FROM (SELECT extract(epoch FROM s.sealed_at - e.created_at) * 1000 AS d
                 FROM job_events e JOIN event_seals s ON s.event_id = e.id
                 WHERE e.id > $1 AND e.id <= $2) t""", first, last)  # fmt: skip
    bench.add(
        "audit", f"commit -> sealed at {rate}/s, p50", row["p50"], "ms", target="within a second"
    )
    bench.add(
        "audit", f"commit -> sealed at {rate}/s, p99", row["p99"], "ms", target="within a second"
    )


async def _sealed_through(bench: Bench, event_id: int, *, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while (
        await bench.conn.fetchval("SELECT coalesce(max(event_id), 0) FROM event_seals") < event_id
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"events up to {event_id} not sealed within {within_s} s")
        await asyncio.sleep(0.01)


async def callback_to_client(bench: Bench) -> None:
    print(
        "\n2. Callback to client: callback sent -> server-sent event received, at 1000/s",
        flush=True,
    )
    n = 1000 if bench.quick else 4000
    job_ids = await bench.seed_submitted("krea", "bfl/flux-1-dev", n)
    requests = {j: bench.callback("krea", j) for j in job_ids}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def listen(ready: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{bench.url}/v1/events/stream",
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
            due = start + i / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[job_id] = time.perf_counter()
            request = requests[job_id]

            async def post(request: Request = request, t0: float = sent_at[job_id]) -> None:
                async with session.post(
                    bench.url + request.path, data=request.body, headers=request.headers
                ) as r:
                    await r.read()
                    ack.latencies_ms.append((time.perf_counter() - t0) * 1000)

            tasks.append(asyncio.create_task(post()))
        await asyncio.gather(*tasks)
    await asyncio.wait_for(done.wait(), 30)
    listener.cancel()
    bench.add(
        "stream",
        "callback -> SSE client p50",
        percentile(latencies, 50),
        "ms",
        "callback ack p50",
        ack.p(50),
        "<= 3 ms",
    )
    bench.add(
        "stream",
        "callback -> SSE client p99",
        percentile(latencies, 99),
        "ms",
        "callback ack p99",
        ack.p(99),
        "<= 25 ms",
    )


async def submission(bench: Bench) -> None:
    print(
        "\n3. Submission: POST /v1/jobs at 1000/s (acceptance; provider work runs behind it)",
        flush=True,
    )
    await bench.sim("fal", "POST", "/_sim/config", {"queue_seconds": 0.2, "run_seconds": 0.5})
    n = 1500 if bench.quick else 5000
    body = orjson.dumps(
        {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "a lighthouse"}}
    )
    requests = [
        Request("POST", "/v1/jobs", body, {"Content-Type": "application/json"}) for _ in range(n)
    ]
    ours = await fixed_rate(bench.url, requests, rate=1000)
    trivial = await fixed_rate(bench.trivial_url, requests, rate=1000)
    assert ours.errors == 0, ours.statuses
    bench.add(
        "submit", "POST /v1/jobs p50 at 1000/s", ours.p(50), "ms", "trivial handler", trivial.p(50)
    )
    bench.add(
        "submit",
        "POST /v1/jobs p99 at 1000/s",
        ours.p(99),
        "ms",
        "trivial handler",
        trivial.p(99),
        "<= 20 ms",
    )


async def wake(bench: Bench) -> None:
    """A job posted to the API instance is claimed by the worker instance: time from its commit
    to its submission's start (both database clocks), jobs posted one at a time."""
    print("\n6. Wake: API instance -> worker instance (NOTIFY jobs_due)", flush=True)
    n = 20 if bench.quick else 60
    body = {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "wake"}}
    ids = []
    async with httpx.AsyncClient(base_url=bench.url, timeout=10) as client:
        for _ in range(n):
            response = await client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            await asyncio.sleep(0.05)  # pacing: one job at a time, the worker otherwise idle
    await wait_terminal(bench, ids)
    rows = await bench.conn.fetch(
        """SELECT extract(epoch FROM min(e.created_at) - j.created_at) * 1000 AS ms
           FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'submission_started'
           WHERE j.id = ANY($1) GROUP BY j.id, j.created_at""",
        ids,
    )
    lags = sorted(float(r["ms"]) for r in rows)
    assert len(lags) == n
    bench.add("wake", "new job -> worker claims it, median", statistics.median(lags), "ms",
              target="<= 50 ms", note=f"p99 {lags[int(len(lags) * 0.99) - 1]:.1f} ms; before: the worker's 1 s idle poll")  # fmt: skip


async def polling(bench: Bench, in_flight: int) -> None:
    print(f"\n4. Polling at scale: {in_flight} in-flight Scenario jobs", flush=True)
    created = await bench.sim("scenario", "POST", "/_sim/bulk_jobs",
                              {"count": in_flight, "queue_seconds": 3600, "run_seconds": 3600})  # fmt: skip
    ids = await bench.seed_submitted("scenario", "model_flux-krea-dev", in_flight,
                                     provider_ids=created["job_ids"], due_within_s=2.0)  # fmt: skip
    await asyncio.sleep(3)  # warm-up: the first round of polls is due within 2 s
    polls0 = await bench.metric("provider_requests_total", provider="scenario", operation="status")
    lag0 = await bench.histogram("runner_due_lag_seconds", provider="scenario")
    window = 5 if bench.quick else 10
    await asyncio.sleep(window)  # the measurement window
    polls1 = await bench.metric("provider_requests_total", provider="scenario", operation="status")
    lag1 = await bench.histogram("runner_due_lag_seconds", provider="scenario")
    rss = bench.worker.rss_mib()
    await bench.conn.execute(
        # Rows locked in id order, as the service's batches lock them (no deadlock with them).
        "UPDATE jobs SET status = 'canceled', next_action_at = NULL WHERE id IN "
        "(SELECT id FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE)",
        ids,
    )
    rate = (polls1 - polls0) / window
    bench.add(
        "polling",
        f"{in_flight} in flight: polls/s (one worker process)",
        rate,
        "polls/s",
        target=">= 5000/s",
    )
    bench.add("polling", f"{in_flight} in flight: due-time lag p99", histogram_quantile(lag0, lag1, 0.99), "s",
              target="< 1 s at 10,000", note="upper bound of the histogram bucket")  # fmt: skip
    bench.add(
        "polling",
        f"{in_flight} in flight: worker resident memory",
        rss,
        "MiB",
        target="< 1024 MiB at 100,000",
    )


async def provider_requests(bench: Bench) -> None:
    print("\n5. Requests to the provider per completed job (3 s jobs)", flush=True)
    import fal_client
    import fal_client.client as fal_module

    for provider in ("fal", "scenario"):
        await bench.sim(
            provider, "POST", "/_sim/config", {"queue_seconds": 0.5, "run_seconds": 2.5}
        )
    n = 10 if bench.quick else 30
    # fal through the service: the webhook brings the result.
    before = (await bench.sim("fal", "GET", "/_sim/stats"))["status_requests"]
    job_ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"{bench.url}/v1/jobs", json={"provider": "fal", "model": "fal-ai/flux/krea",
                                                                   "input": {"prompt": "x"}}) as r:  # fmt: skip
                job_ids.append((await r.json())["id"])
    await wait_terminal(bench, job_ids)
    ours_fal = ((await bench.sim("fal", "GET", "/_sim/stats"))["status_requests"] - before) / n
    # The official fal-client's subscribe loop on the same simulated job length.
    fal_module.QUEUE_URL_FORMAT = bench.sims["fal"] + "/"
    client = fal_client.AsyncClient(key="sim-fal-key")
    before = (await bench.sim("fal", "GET", "/_sim/stats"))["status_requests"]
    k = 5
    await asyncio.gather(
        *(client.subscribe("fal-ai/flux/krea", arguments={"prompt": "x"}) for _ in range(k))
    )
    official = ((await bench.sim("fal", "GET", "/_sim/stats"))["status_requests"] - before) / k
    bench.add("requests", "fal: status requests per job (ours)", ours_fal, "req/job", "fal-client subscribe (0.1 s)",
              official, "0 when the webhook arrives")  # fmt: skip
    # Scenario through the service: polled.
    before = (await bench.sim("scenario", "GET", "/_sim/stats"))["status_requests"]
    job_ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"{bench.url}/v1/jobs", json={"provider": "scenario", "model": "model_flux-krea-dev",
                                                                   "input": {"prompt": "x"}}) as r:  # fmt: skip
                job_ids.append((await r.json())["id"])
    await wait_terminal(bench, job_ids)
    ours_scenario = (
        (await bench.sim("scenario", "GET", "/_sim/stats"))["status_requests"] - before
    ) / n
    # When the provider finished vs when the service knew: the simulator's end time is its
    # creation time plus the configured 3 s.
    sim_jobs = {j["id"]: j for j in (await bench.sim("scenario", "GET", "/_sim/jobs"))["jobs"]}
    rows = await bench.conn.fetch(
        "SELECT provider_job_id, completed_at FROM jobs WHERE id = ANY($1::text[])", job_ids
    )
    delays = []
    for row in rows:
        created = datetime.fromisoformat(
            sim_jobs[row["provider_job_id"]]["created_at"].replace("Z", "+00:00")
        )
        delays.append((row["completed_at"] - created).total_seconds() - 3.0)
    bench.add("requests", "scenario: status requests per job (ours)", ours_scenario, "req/job",
              "a 0.1 s polling loop", 3.0 / 0.1 + 1, ">= 10x fewer")  # fmt: skip
    bench.add(
        "requests",
        "scenario: completion noticed after (median)",
        percentile(delays, 50),
        "s",
        target="<= 1 s",
    )


async def archive(bench: Bench) -> None:
    """The archiver's cost: how long after a job's success its outputs are archived, and jobs
    per second end to end (posted, run at the provider, and archived) with OUTPUT_STORE_URL=none
    against the folder store, each phase on a worker instance of its own."""
    print(
        "\n7. Archived outputs: success -> archived; jobs/s end to end, none vs folder", flush=True
    )
    bench.worker.stop()  # each phase runs its own worker; none other may take its jobs
    for provider in ("krea", "fal", "scenario"):
        await bench.sim(
            provider, "POST", "/_sim/config", {"queue_seconds": 0.2, "run_seconds": 0.5}
        )
    n = 150 if bench.quick else 600
    none_rate, _ = await archive_phase(bench, "none", n)
    store = f"file://{bench.logs / 'outputs'}"
    folder_rate, lags = await archive_phase(bench, store, n)
    _, idle_lags = await archive_phase(bench, store, 20 if bench.quick else 60, pace_s=0.05)
    bench.add("archive", f"job success -> all outputs archived, {n} at once, median", statistics.median(lags),
              "ms", note=f"{n} jobs posted at once; outputs are the simulators' small images")  # fmt: skip
    bench.add(
        "archive",
        f"job success -> all outputs archived, {n} at once, p99",
        percentile(lags, 99),
        "ms",
    )
    bench.add("archive", f"{n} jobs end to end, folder store", folder_rate, "jobs/s",
              "OUTPUT_STORE_URL=none", none_rate)  # fmt: skip
    bench.add("archive", "job success -> all outputs archived, one job at a time, median",
              statistics.median(idle_lags), "ms", note=f"p99 {percentile(idle_lags, 99):.1f} ms")  # fmt: skip


async def archive_phase(
    bench: Bench, store: str, n: int, *, pace_s: float | None = None
) -> tuple[float, list[float]]:
    """n jobs (Krea, fal, Scenario in turn) posted to the API instance, all at once or one every
    `pace_s`, and run by a new worker archiving into `store`: (jobs/s from the first post to the
    last job done, and each job's time from success to its last output archived in ms)."""
    # Staging: the earlier sections' jobs (and the none phase's) left their outputs queued with
    # no archiver; this phase archives its own jobs' outputs only.
    await bench.conn.execute("DELETE FROM output_archives WHERE state = 'pending'")
    port = free_port()
    env = bench.service_env(port, RUN_WORKERS="true", OUTPUT_STORE_URL=store,
                            OUTPUT_FETCH_ALLOW_PRIVATE="true", PROVIDER_CONCURRENCY=bench.concurrency)  # fmt: skip
    worker = Child(f"service-worker-{'none' if store == 'none' else 'folder'}-{n}",
                   [sys.executable, "-m", "service", "serve"], env, bench.logs)  # fmt: skip
    bench.children.append(worker)
    await worker.ready(f"http://127.0.0.1:{port}/readyz")
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
            async with limit, session.post(f"{bench.url}/v1/jobs", json=body) as response:
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
                await asyncio.sleep(pace_s)  # pacing: one job at a time, the worker otherwise idle
        await wait_terminal(bench, ids)
        if store != "none":
            await wait_archived(bench, ids)
        elapsed = time.perf_counter() - started
    worker.stop()
    rows = await bench.conn.fetch(
        """SELECT extract(epoch FROM max(e.created_at) - j.completed_at) * 1000 AS ms
           FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'output_archived'
           WHERE j.id = ANY($1::text[]) GROUP BY j.id, j.completed_at""",
        ids,
    )
    return n / elapsed, [float(r["ms"]) for r in rows]


async def wait_archived(bench: Bench, job_ids: list[str], *, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = await bench.conn.fetchval(
            "SELECT count(*) FROM output_archives WHERE job_id = ANY($1::text[]) AND state = 'pending'",
            job_ids,
        )
        if left == 0:
            return
        await asyncio.sleep(0.05)  # another process's progress, bounded by the deadline
    raise RuntimeError("outputs were not archived in time")


async def wait_terminal(bench: Bench, job_ids: list[str], *, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = await bench.conn.fetchval(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::text[]) AND status NOT IN ('succeeded', 'failed', 'canceled')",
            job_ids,
        )
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("jobs did not finish in time")


def write_report(bench: Bench, started: datetime) -> None:
    OUT.mkdir(exist_ok=True)
    machine = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }  # fmt: skip
    data = {"started": started.isoformat(), "machine": machine, "quick": bench.quick,
            "figures": [{**f.__dict__, "ratio": f.ratio} for f in bench.figures]}  # fmt: skip
    (OUT / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"Run {started:%Y-%m-%d %H:%M} UTC on {machine['cpus']} CPUs, {machine['memory_gib']} GiB, Python {machine['python']}",
             "", "| section | figure | value | baseline | ratio | target |", "|---|---|---|---|---|---|"]  # fmt: skip
    for f in bench.figures:
        base = f"{f.baseline:.1f} ({f.baseline_name})" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        lines.append(
            f"| {f.section} | {f.name} | {f.value:.1f} {f.unit} | {base} | {ratio} | {f.target} |"
        )
    (OUT / "latest.md").write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {OUT / 'latest.json'}, {OUT / 'latest.md'}")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke run")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="sections: intake stream submit requests wake polling audit archive",
    )
    args = parser.parse_args()
    started = datetime.now(UTC)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bench = Bench(quick=args.quick, logs=logs)
    sections = args.only or [
        "intake", "stream", "submit", "requests", "wake", "polling", "audit", "archive"
    ]  # fmt: skip
    try:
        await bench.start()
        if "intake" in sections:
            await intake(bench)
        if "stream" in sections:
            await callback_to_client(bench)
        if "submit" in sections:
            await submission(bench)
        if "requests" in sections:
            await provider_requests(bench)
        if "wake" in sections:
            await wake(bench)
        if "polling" in sections:
            await polling(bench, 10_000)
            await polling(bench, 100_000 if not args.quick else 20_000)
        if "audit" in sections:
            await audit_chain(bench)
        if "archive" in sections:  # last: it stops the shared worker instance
            await archive(bench)
    finally:
        await bench.stop()
        write_report(bench, started)


if __name__ == "__main__":
    asyncio.run(main())
