"""Helpers shared by the simulator tests: a webhook receiver, polling with a deadline, controls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from aiohttp import web

from simulators import RunningSimulators, SimulatorConfig

T = TypeVar("T")

# Short phases keep the suite fast; tests that need a job to stay pending raise queue_seconds.
TEST_CONFIG = SimulatorConfig(
    queue_seconds=0.05,
    run_seconds=0.1,
    callback_retry_base_seconds=0.05,
    random_seed=1234,
)
DEADLINE_SECONDS = 10.0


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], *, deadline: float = DEADLINE_SECONDS
) -> T:
    """Poll `probe` until it returns something other than None, failing after `deadline`."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        value = await probe()
        if value is not None:
            return value
        if loop.time() > give_up:
            pytest.fail(f"condition not met within {deadline} s")
        await asyncio.sleep(0.02)


@dataclass
class Delivery:
    """One webhook POST as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP endpoint that records webhooks and answers with scripted status codes."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    # Status codes to answer, in order; once exhausted every POST gets 200.
    script: list[int] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        delivery = Delivery(request.path, dict(request.headers), await request.read())
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="ok")

    async def wait_for(self, count: int, *, deadline: float = DEADLINE_SECONDS) -> list[Delivery]:
        """Wait until at least `count` webhooks arrived; return all received so far."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.deliveries) >= count), deadline
            )
        return list(self.deliveries)


async def configure(
    http: httpx.AsyncClient, sims: RunningSimulators, provider: str, **patch: Any
) -> dict[str, Any]:
    """Change a simulator's config through its control endpoint."""
    response = await http.post(f"{sims.control_url(provider)}/config", json=patch)
    assert response.status_code == 200, response.text
    config: dict[str, Any] = response.json()
    return config


async def sim_job(
    http: httpx.AsyncClient, sims: RunningSimulators, provider: str, job_id: str
) -> dict[str, Any]:
    """A job as the simulator's control API lists it."""
    response = await http.get(f"{sims.control_url(provider)}/jobs")
    jobs = {job["id"]: job for job in response.json()["jobs"]}
    job: dict[str, Any] = jobs[job_id]
    return job


async def callbacks_settled(
    http: httpx.AsyncClient, sims: RunningSimulators, provider: str, job_id: str
) -> dict[str, Any]:
    """Wait until the simulator has finished with a job's webhook (delivered, dropped, failed)."""

    async def probe() -> dict[str, Any] | None:
        job = await sim_job(http, sims, provider, job_id)
        return job if job["callback_state"] in ("delivered", "dropped", "failed") else None

    return await wait_until(probe)


async def stats(http: httpx.AsyncClient, sims: RunningSimulators, provider: str) -> dict[str, int]:
    response = await http.get(f"{sims.control_url(provider)}/stats")
    counts: dict[str, int] = response.json()
    return counts


async def stats_when(
    http: httpx.AsyncClient, sims: RunningSimulators, provider: str, **wanted: int
) -> dict[str, int]:
    """Wait until the simulator's counters have the `wanted` values; return them all."""

    async def probe() -> dict[str, int] | None:
        counts = await stats(http, sims, provider)
        return counts if all(counts[name] == value for name, value in wanted.items()) else None

    return await wait_until(probe)


async def job_ended(
    http: httpx.AsyncClient, sims: RunningSimulators, provider: str, job_id: str
) -> dict[str, Any]:
    """Wait until the simulator's control API shows the job over; return its summary."""

    async def probe() -> dict[str, Any] | None:
        job = await sim_job(http, sims, provider, job_id)
        return job if job["outcome"] is not None else None

    return await wait_until(probe)
