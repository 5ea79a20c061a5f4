"""Real processes for the chaos suite: service instances, the simulators, a load balancer in
front of the instances, and the checks that count lost, doubled and repeated work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import ClientConnectorError, ClientError, ClientSession, ClientTimeout, web

REPO = Path(__file__).resolve().parents[2]
#: The marks of every chaos test: its marker, and a longer hang guard than the suite's 180 s (a
#: chaos run takes 10-50 s on a 2-core machine sharing it with three other test processes, and
#: CI's machine has been up to three times slower).
CHAOS_MARKS = [pytest.mark.chaos, pytest.mark.timeout(600)]
TERMINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def serve_on_free_port(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    """`app` served on 127.0.0.1 at `port` (0: a free one): its runner (to clean up) and base
    URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to a running child's process group, SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Process:
    """A child process with its output in a log file; kill -9 and restart on demand."""

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path, health_url: str
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.health_url = health_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        self.starts += 1

    async def ready(self, *, within_s: float = 30.0) -> None:
        """Waits until the process answers its health URL (or fails with its log)."""
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready: {self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_group(self.proc)

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Balancer:
    """Round-robin HTTP proxy in front of the instances, as users run them: a request goes to
    the next instance that accepts a connection; 502 when none does."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self._next = 0
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=30))
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner, self.url = await serve_on_free_port(app)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        for _ in range(len(self.backends)):
            backend = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                async with self._session.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as upstream:
                    payload = await upstream.read()
                    return web.Response(
                        body=payload, status=upstream.status, content_type=upstream.content_type
                    )
            except ClientConnectorError:
                continue  # connection refused: that instance is down, try the next
            except ClientError:
                break  # it died mid-request: the outcome is unknown to us, as to any balancer
        return web.json_response(
            {"error": {"code": "bad_gateway", "message": "no instance", "details": []}}, status=502
        )


@dataclass
class Tally:
    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    not_terminal: list[str] = field(default_factory=list)
    submitted_twice: list[str] = field(default_factory=list)
    duplicate_transitions: list[Any] = field(default_factory=list)
    seq_gaps: list[str] = field(default_factory=list)
    archived_twice: list[Any] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    terminal_sources: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()) if v)
        return (
            f"chaos tally: jobs={self.jobs} lost={len(self.lost) + len(self.not_terminal)} "
            f"submitted_twice={len(self.submitted_twice)} duplicate_transitions={len(self.duplicate_transitions)} "
            f"seq_gaps={len(self.seq_gaps)} archived_twice={len(self.archived_twice)} outcomes={dict(self.outcomes)} "
            f"terminal_by={dict(self.terminal_sources)} faults: {faults}"
        )


async def audit(
    dsn: str, *, acknowledged: dict[str, str], sim_jobs: list[dict[str, Any]], tally: Tally
) -> None:
    """Fills the tally from the database and the simulators' records."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, status, idempotency_key, error->>'code' AS code FROM jobs"
        )
        by_id = {r["id"]: r for r in rows}
        tally.jobs = len(rows)
        tally.lost = [job_id for job_id in acknowledged.values() if job_id not in by_id]
        tally.not_terminal = [r["id"] for r in rows if r["status"] not in TERMINAL]
        tally.outcomes = Counter(
            f"{r['status']}:{r['code']}" if r["code"] else r["status"] for r in rows
        )
        tally.duplicate_transitions = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT job_id, to_status, count(*) FROM job_events WHERE type = 'status_changed' "
                "GROUP BY job_id, to_status HAVING count(*) > 1"
            )
        ]
        tally.seq_gaps = [
            r["job_id"]
            for r in await conn.fetch(
                "SELECT job_id FROM job_events GROUP BY job_id HAVING max(seq) <> count(*) OR min(seq) <> 1"
            )
        ]
        tally.archived_twice = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT job_id, data->>'index', count(*) FROM job_events "
                "WHERE type IN ('output_archived', 'output_archive_failed') "
                "GROUP BY job_id, data->>'index' HAVING count(*) > 1"
            )
        ]
        tally.terminal_sources = Counter(
            f"{r['provider']}:{r['source']}"
            for r in await conn.fetch(
                "SELECT j.provider, e.source FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE e.type = 'status_changed' AND e.to_status IN ('succeeded', 'failed', 'canceled')"
            )
        )
    finally:
        await conn.close()
    per_key = Counter(job["prompt"].rsplit("#", 1)[-1] for job in sim_jobs if "#" in job["prompt"])
    tally.submitted_twice = [key for key, count in per_key.items() if count > 1]


def service_env(
    *, dsn: str, port: int, public_url: str, sims: dict[str, str], log_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update({
        "DATABASE_URL": dsn, "HOST": "127.0.0.1", "PORT": str(port), "PUBLIC_BASE_URL": public_url,
        "SERVICE_DATA_DIR": str(log_dir / f"data-{port}"),
        # One output store for every instance (any of them may archive any job's outputs),
        # and the simulators' outputs are on 127.0.0.1.
        "OUTPUT_STORE_URL": f"file://{log_dir / 'outputs'}", "OUTPUT_FETCH_ALLOW_PRIVATE": "true",
        "KREA_API_URL": sims["krea"], "KREA_API_TOKEN": "sim-krea-token",
        "FAL_QUEUE_URL": sims["fal"], "FAL_KEY": "sim-fal-key", "FAL_JWKS_URL": sims["fal"] + "/.well-known/jwks.json",
        "SCENARIO_API_URL": sims["scenario"] + "/v1", "SCENARIO_SDK_API_KEY": "sim-scenario-key",
        "SCENARIO_SDK_API_SECRET": "sim-scenario-secret",
        "WORKER_LEASE_S": "3", "WEBHOOK_GRACE_S": "3", "SUBMISSION_BIND_WAIT_S": "8",
        "KREA_JOB_TIMEOUT_S": "90", "FAL_JOB_TIMEOUT_S": "90", "SCENARIO_JOB_TIMEOUT_S": "90",
        "LOG_LEVEL": "warning", "LOG_FORMAT": "json", "DB_POOL_MAX": "8",
    })  # fmt: skip
    return env


def python() -> str:
    return sys.executable
