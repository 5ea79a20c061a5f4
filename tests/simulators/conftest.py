"""Fixtures for the simulator tests: one set of simulators per session, reset before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from aiohttp import web

from simulators import RunningSimulators, start_simulators
from tests.simulators.helpers import DEADLINE_SECONDS, TEST_CONFIG, WebhookReceiver


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sims() -> AsyncIterator[RunningSimulators]:
    running = await start_simulators(config=TEST_CONFIG)
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=DEADLINE_SECONDS) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def _reset_simulators(sims: RunningSimulators, http: httpx.AsyncClient) -> None:
    for provider in ("krea", "fal", "scenario"):
        response = await http.post(f"{sims.control_url(provider)}/reset")
        assert response.status_code == 200


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hooks/{token}", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    try:
        yield hooks
    finally:
        await runner.cleanup()
