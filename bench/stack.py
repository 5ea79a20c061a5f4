"""What a bench run starts: the durable PostgreSQL, the provider simulators, the baselines, and
the deployments of the service it measures, each on a database of its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.loadgen import Request
from service.db.embedded import EmbeddedPostgres
from service.store import new_job_id

REPO = Path(__file__).resolve().parents[1]
PROVIDERS = ("krea", "fal", "scenario")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (processes gone since count 0)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return total


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class Child:
    """A child process whose output goes to a log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], logs: Path, *, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            args,
            env=env,
            cwd=cwd,  # `python -m service` imports the service found there first
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ready(self, url: str, *, processes: int = 1, within_s: float = 60) -> None:
        """Until `url` answers 200 and, for a `serve` of several processes, every process has
        answered `/healthz` (each names its pid) on a connection of its own."""
        base = url.rsplit("/", 1)[0]
        deadline = time.monotonic() + within_s
        pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    ready = response.status == 200
                if ready and processes == 1:
                    return
                if ready:  # a new connection each time: the kernel picks the process
                    async with (
                        aiohttp.ClientSession() as session,
                        session.get(f"{base}/healthz") as response,
                    ):
                        pids.add((await response.json())["pid"])
                    if len(pids) >= processes:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The process and its children (a `serve` of WEB_CONCURRENCY processes)."""
        return [self.proc.pid, *children_of(self.proc.pid)]

    def rss_mib(self) -> float:
        total = 0.0
        for pid in self.pids():
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(match.group(1)) / 1024 if match else float("nan")
        return total

    def stop(self) -> None:
        """SIGTERM (a `serve` forwards it to its processes), SIGKILL after 30 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Deployment:
    """The service as one deployment runs it, on a database of its own: `url` takes the API
    and the callbacks, `workers_url` is where the job runner's /metrics are served."""

    name: str
    processes: int
    url: str
    workers_url: str
    dsn: str
    database: str
    conn: asyncpg.Connection
    children: list[Child]

    @property
    def workers(self) -> Child:
        return self.children[-1]

    def pids(self) -> list[int]:
        return [pid for child in self.children for pid in child.pids()]

    async def histogram(self, name: str, **labels: str) -> dict[float, float]:
        text = await _get_text(f"{self.workers_url}/metrics")
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket") and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                le = re.search(r'le="([^"]+)"', line)
                assert le is not None
                buckets[float(le.group(1))] = float(line.rsplit(" ", 1)[1])
        return buckets

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

    async def wait_terminal(self, job_ids: list[str], *, within_s: float = 60) -> None:
        await self._wait_none_left(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::text[]) AND status NOT IN ('succeeded', 'failed', 'canceled')",
            job_ids, within_s, "jobs did not finish in time",
        )  # fmt: skip

    async def wait_archived(self, job_ids: list[str], *, within_s: float = 60) -> None:
        await self._wait_none_left(
            "SELECT count(*) FROM output_archives WHERE job_id = ANY($1::text[]) AND state = 'pending'",
            job_ids, within_s, "outputs were not archived in time",
        )  # fmt: skip

    async def _wait_none_left(
        self, query: str, ids: list[str], within_s: float, error: str
    ) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if await self.conn.fetchval(query, ids) == 0:
                return
            await asyncio.sleep(0.05)  # another process's progress, bounded by the deadline
        raise RuntimeError(error)


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


@dataclass
class Stack:
    """PostgreSQL (durable defaults), the simulators, fal's JWKS, the trivial handler."""

    logs: Path
    children: list[Child] = field(default_factory=list)

    async def start(self) -> None:
        self.pg = EmbeddedPostgres(REPO / ".data" / "bench", stop_at_exit=True)
        self.admin_dsn = self.pg.start()
        self.run_id = int(time.time())
        self.env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}

        # fal's webhook keys: the bench signs like fal and serves the JWKS.
        self.fal_key = Ed25519PrivateKey.generate()
        x = base64.urlsafe_b64encode(
            self.fal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).rstrip(b"=")
        jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x.decode(), "kid": "bench"}]}
        app = web.Application()

        async def serve_jwks(_request: web.Request) -> web.Response:
            return web.json_response(jwks)

        app.router.add_get("/jwks.json", serve_jwks)
        self._jwks_runner = web.AppRunner(app, access_log=None)
        await self._jwks_runner.setup()
        self.jwks_port = free_port()
        await web.TCPSite(self._jwks_runner, "127.0.0.1", self.jwks_port).start()

        self.sim_ports = {p: free_port() for p in PROVIDERS}
        self.sims = {p: f"http://127.0.0.1:{port}" for p, port in self.sim_ports.items()}
        sims = Child("simulators", [sys.executable, "-m", "simulators",
                                    "--krea-port", str(self.sim_ports["krea"]), "--fal-port", str(self.sim_ports["fal"]),
                                    "--scenario-port", str(self.sim_ports["scenario"])], self.env, self.logs)  # fmt: skip
        self.children.append(sims)
        await sims.ready(f"{self.sims['krea']}/_sim/stats")
        # The fal simulator signs its own webhooks: its key joins the bench's in the JWKS.
        jwks["keys"] += (await self.sim("fal", "GET", "/.well-known/jwks.json"))["keys"]

        trivial_port = free_port()
        self.trivial_url = f"http://127.0.0.1:{trivial_port}"
        self.trivial = Child("trivial", [sys.executable, "-m", "bench.trivial", str(trivial_port)],
                             self.env, self.logs)  # fmt: skip
        self.children.append(self.trivial)
        await self.trivial.ready(f"{self.trivial_url}/")

    def postgres_pids(self) -> list[int]:
        """The postmaster and its processes (a backend that exits meanwhile is not counted:
        the service's pools keep theirs)."""
        postmaster = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
        return [postmaster, *children_of(postmaster)]

    async def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        await self._jwks_runner.cleanup()
        self.pg.close()

    def service_env(self, port: int, public_url: str, dsn: str, **extra: str) -> dict[str, str]:
        """`serve` with its defaults, pointed at this run's database and simulators. Outputs
        are not archived unless a section says so (the archive section measures the archiver;
        the staged callbacks' outputs are on a host that does not exist)."""
        return {
            **self.env, "DATABASE_URL": dsn, "HOST": "127.0.0.1", "PORT": str(port),
            "PUBLIC_BASE_URL": public_url, "SERVICE_DATA_DIR": str(self.logs / f"data-{port}"),
            "OUTPUT_STORE_URL": "none", "LOG_FORMAT": "json",
            "KREA_API_URL": self.sims["krea"], "KREA_API_TOKEN": "sim-krea-token",
            "FAL_QUEUE_URL": self.sims["fal"], "FAL_KEY": "sim-fal-key",
            "FAL_JWKS_URL": f"http://127.0.0.1:{self.jwks_port}/jwks.json",
            "SCENARIO_API_URL": self.sims["scenario"] + "/v1", "SCENARIO_SDK_API_KEY": "sim-scenario-key",
            "SCENARIO_SDK_API_SECRET": "sim-scenario-secret", **extra,
        }  # fmt: skip

    async def deploy(
        self,
        name: str,
        *,
        processes: int = 1,
        split: bool = False,
        tree: Path = REPO,
        **extra: str,
    ) -> Deployment:
        """One `python -m service serve` with WEB_CONCURRENCY=`processes`; or, `split`, an API
        instance (RUN_WORKERS=false) and a worker instance. A fresh database each, and the
        simulators reset (no earlier deployment's jobs in flight). `tree`: a source tree of
        the service to run instead of this one (an earlier commit, for a before/after)."""
        for provider in PROVIDERS:
            await self.sim(provider, "POST", "/_sim/reset")
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower())
        database = f"bench_{self.run_id}_{slug}"
        admin = await asyncpg.connect(self.admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        dsn = self.admin_dsn.replace("/postgres?", f"/{database}?")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        children = []
        if split:
            api = Child(f"{slug}-api", [sys.executable, "-m", "service", "serve"],
                        self.service_env(port, url, dsn, RUN_WORKERS="false", **extra), self.logs)  # fmt: skip
            children.append(api)
            await api.ready(f"{url}/readyz")
            worker_port = free_port()
            workers_url = f"http://127.0.0.1:{worker_port}"
            worker = Child(f"{slug}-worker", [sys.executable, "-m", "service", "serve"],
                           self.service_env(worker_port, url, dsn, **extra), self.logs)  # fmt: skip
            children.append(worker)
            await worker.ready(f"{workers_url}/readyz")
        else:
            env = self.service_env(port, url, dsn, WEB_CONCURRENCY=str(processes), **extra)
            serve = Child(
                slug, [sys.executable, "-m", "service", "serve"], env, self.logs, cwd=tree
            )
            children.append(serve)
            await serve.ready(f"{url}/readyz", processes=processes)
            workers_url = url
        conn = await asyncpg.connect(dsn)
        return Deployment(name, processes, url, workers_url, dsn, database, conn, children)

    async def undeploy(self, deployment: Deployment) -> None:
        """Stops the deployment and drops its database (a run would otherwise leave hundreds
        of thousands of staged jobs behind in .data/bench)."""
        await deployment.conn.close()
        for child in reversed(deployment.children):
            child.stop()
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{deployment.database}" WITH (FORCE)')
        finally:
            await admin.close()

    async def sim(self, provider: str, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.sims[provider] + path, json=body) as response,
        ):
            return await response.json()

    def callback(self, provider: str, job_id: str) -> Request:
        """A provider's callback for a staged job: Krea's (unsigned) or fal's (Ed25519)."""
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

    async def callbacks(self, deployment: Deployment, count: int) -> list[Request]:
        """Half Krea, half signed fal, one distinct staged job each."""
        krea = await deployment.seed_submitted("krea", "bfl/flux-1-dev", count // 2)
        fal = await deployment.seed_submitted("fal", "fal-ai/flux/krea", count - count // 2)
        requests = []
        for k, f in zip(krea, fal, strict=False):
            requests += [self.callback("krea", k), self.callback("fal", f)]
        requests += [self.callback("fal", f) for f in fal[len(krea) :]]
        return requests
