"""WEB_CONCURRENCY: one `python -m service serve` (a real process) runs several HTTP server
processes on one port; both answer, jobs run end to end, the event stream stays gap-free and
repeat-free while both take callbacks, and the parent never leaves a child behind."""

from __future__ import annotations

import asyncio
import os
import select
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from simulators import RunningSimulators, SimulatorConfig, start_simulators
from tests.acceptance.stack import TERMINAL, JobWatcher
from tests.chaos.harness import Process, free_port, python

PROCESSES = 2


def serve_env(dsn: str, port: int, sims: RunningSimulators, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update({
        "WEB_CONCURRENCY": str(PROCESSES), "DATABASE_URL": dsn, "HOST": "127.0.0.1",
        "PORT": str(port), "SERVICE_DATA_DIR": str(data_dir), "OUTPUT_STORE_URL": "none",
        "KREA_API_URL": sims.krea_url, "KREA_API_TOKEN": sims.krea_token,
        "FAL_QUEUE_URL": sims.fal_url, "FAL_KEY": sims.fal_key, "FAL_JWKS_URL": sims.fal_jwks_url,
        "SCENARIO_API_URL": sims.scenario_url, "SCENARIO_SDK_API_KEY": sims.scenario_api_key,
        "SCENARIO_SDK_API_SECRET": sims.scenario_api_secret, "LOG_FORMAT": "json",
    })  # fmt: skip
    return env


@dataclass
class Serve:
    process: Process
    url: str
    sims: RunningSimulators
    watcher: JobWatcher

    async def pinned_clients(self) -> dict[int, httpx.AsyncClient]:
        """One client per server process: a client of one kept-alive connection, which the
        kernel gave (SO_REUSEPORT) to the process named by its /healthz. New connections are
        opened until every process has answered; the processes may still be binding."""
        clients: dict[int, httpx.AsyncClient] = {}
        deadline = asyncio.get_running_loop().time() + 30
        while len(clients) < PROCESSES:
            assert asyncio.get_running_loop().time() < deadline, f"only {set(clients)} answered"
            client = httpx.AsyncClient(
                base_url=self.url, timeout=10, limits=httpx.Limits(max_connections=1)
            )
            pid = (await client.get("/healthz")).json()["pid"]
            if pid in clients:
                await client.aclose()
                await asyncio.sleep(0.05)  # the other process may not listen yet
            else:
                clients[pid] = client
        return clients

    def children(self) -> list[int]:
        assert self.process.proc is not None
        path = Path(f"/proc/{self.process.proc.pid}/task/{self.process.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


@pytest.fixture
async def serve(database_url: str, tmp_path: Path) -> AsyncIterator[Serve]:
    sims = await start_simulators(config=SimulatorConfig(queue_seconds=0.05, run_seconds=0.1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        "serve",
        [python(), "-m", "service", "serve"],
        env=serve_env(database_url, port, sims, tmp_path),
        log_dir=tmp_path,
        health_url=f"{url}/readyz",
    )
    listen = await asyncpg.connect(database_url)
    watcher = JobWatcher(listen)
    await watcher.start()
    process.start()
    try:
        await process.ready()
        yield Serve(process, url, sims, watcher)
    finally:
        process.stop()
        await listen.close()
        await sims.close()


def exited(pid: int, *, within_s: float = 20) -> bool:
    """Waits for a process (not necessarily our child) to end: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], within_s)
        return bool(readable)
    finally:
        os.close(fd)


async def wait_all(
    serve: Serve, http: httpx.AsyncClient, ids: list[str], statuses: set[str]
) -> None:
    async def reached() -> None:
        async with serve.watcher.changed:
            while True:
                jobs = [(await http.get(f"/v1/jobs/{i}")).json() for i in ids]
                if all(j["status"] in statuses for j in jobs):
                    return
                await serve.watcher.changed.wait()

    await asyncio.wait_for(reached(), 30)


async def test_both_processes_answer_and_a_job_runs_end_to_end(serve: Serve) -> None:
    clients = await serve.pinned_clients()
    try:
        assert len(clients) == PROCESSES and serve.process.proc is not None
        assert sorted(clients) == sorted(serve.children())
        ids = []
        for client in clients.values():  # each process accepts one; either runs it
            response = await client.post("/v1/jobs", json={
                "provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "two processes"}})  # fmt: skip
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        first = next(iter(clients.values()))
        await wait_all(serve, first, ids, TERMINAL)
        for job_id in ids:
            job = (await first.get(f"/v1/jobs/{job_id}")).json()
            assert job["status"] == "succeeded" and job["outputs"]
            events = (await first.get(f"/v1/jobs/{job_id}/events")).json()["events"]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["source"] == "webhook"  # fal's webhook, to one of the processes
    finally:
        for client in clients.values():
            await client.aclose()


async def test_the_stream_is_gap_free_while_both_processes_take_callbacks(serve: Serve) -> None:
    """The stream is served by one process; the Krea callbacks (sent by the test, the
    simulator's own dropped) go to both, alternately, concurrently."""
    async with httpx.AsyncClient(base_url=serve.url, timeout=10) as http:
        response = await http.post(
            f"{serve.sims.krea_url}/_sim/config", json={"callback_drop_rate": 1.0}
        )
        assert response.status_code == 200
    clients = await serve.pinned_clients()
    pids = list(clients)
    n = 40
    try:
        first = clients[pids[0]]
        ids = []
        for i in range(n):
            response = await clients[pids[i % PROCESSES]].post("/v1/jobs", json={
                "provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": f"stream {i}"}})  # fmt: skip
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        await wait_all(serve, first, ids, {"submitted", "queued", "running"})
        streamed: list[dict[str, Any]] = []
        stream_open = asyncio.Event()

        async def follow() -> None:
            done: set[str] = set()
            async with (
                httpx.AsyncClient(base_url=serve.url, timeout=30) as stream_client,
                stream_client.stream("GET", "/v1/events/stream", params={"after": 0}) as r,
            ):
                stream_open.set()
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        event = orjson.loads(line[6:])
                        streamed.append(event)
                        if event["to_status"] in TERMINAL:
                            done.add(event["job_id"])
                        if done >= set(ids):
                            return

        follower = asyncio.create_task(follow())
        await stream_open.wait()
        sim_jobs = list(serve.sims.krea.jobs.values())
        assert len(sim_jobs) == n

        async def callback(index: int) -> None:
            job = sim_jobs[index]
            body, headers = serve.sims.krea.render_callback(job)
            assert job.callback_url is not None
            response = await clients[pids[index % PROCESSES]].post(
                job.callback_url, content=body, headers=headers
            )
            assert response.status_code == 200, response.text

        await asyncio.gather(*(callback(i) for i in range(n)))
        await asyncio.wait_for(follower, 30)
        stored = [
            e
            for job_id in ids
            for e in (await first.get(f"/v1/jobs/{job_id}/events")).json()["events"]
        ]
        streamed_ids = [e["id"] for e in streamed]
        assert streamed_ids == sorted(set(streamed_ids))  # in order, no repeat
        assert streamed_ids == sorted(e["id"] for e in stored)  # no gap
        statuses = {(await first.get(f"/v1/jobs/{job_id}")).json()["status"] for job_id in ids}
        assert statuses == {"succeeded"}
    finally:
        for client in clients.values():
            await client.aclose()


async def test_sigterm_stops_every_process(serve: Serve) -> None:
    children = serve.children()
    assert len(children) == PROCESSES
    assert serve.process.proc is not None
    serve.process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve.process.proc.wait, 30) == 0
    assert all(exited(pid, within_s=0) for pid in children)


async def test_a_process_that_dies_stops_the_serve(serve: Serve) -> None:
    """The parent does not run on at reduced capacity: it stops the others and exits 1, for
    the outer supervisor to restart the whole serve."""
    victim, *others = serve.children()
    os.kill(victim, signal.SIGKILL)
    assert serve.process.proc is not None
    assert await asyncio.to_thread(serve.process.proc.wait, 30) == 1
    assert all(exited(pid, within_s=0) for pid in others)


async def test_a_killed_parent_leaves_no_orphan(serve: Serve) -> None:
    children = serve.children()
    assert serve.process.proc is not None
    serve.process.proc.kill()  # SIGKILL: no forwarding; the kernel tells the children
    serve.process.proc.wait()
    assert all(await asyncio.gather(*(asyncio.to_thread(exited, pid) for pid in children)))
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):  # nothing listens on the port any more
            await client.get(f"{serve.url}/healthz")
