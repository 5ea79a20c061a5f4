"""GracefulShutdown (service.web.shutdown) over in-memory claim loops: claiming stops, the
work in flight finishes within the grace or is cancelled at its end (or at a second signal),
and only then are the leases released, once per worker, with the figures logged."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import structlog

from service.web.shutdown import GracefulShutdown, Worker
from service.workers.claim_loop import ClaimLoop


class GatedLoop(ClaimLoop[int]):
    """Claims `items` once; each item's work waits for `gate`."""

    def __init__(self, items: int) -> None:
        super().__init__(name="gated", batch_size=100, idle_wait_s=30.0, log=structlog.get_logger())
        self.items = items
        self.claims = 0
        self.gate = asyncio.Event()
        self.started = 0
        self.done = 0
        self.claimed = asyncio.Event()
        self.all_started = asyncio.Event()  # every handler is at its gate
        if items == 0:
            self.all_started.set()
        self.expected = items

    async def claim(self) -> Sequence[int]:
        self.claims += 1
        self.claimed.set()
        claimed, self.items = list(range(self.items)), 0
        return claimed

    async def handle(self, item: int) -> None:
        del item
        self.started += 1
        if self.started == self.expected:
            self.all_started.set()
        await self.gate.wait()
        self.done += 1

    async def next_due(self) -> datetime | None:
        return None


class Releases:
    def __init__(self, loop: GatedLoop) -> None:
        self.loop = loop
        self.calls: list[int] = []  # work still running at each release: must be 0

    async def __call__(self) -> int:
        self.calls.append(self.loop.in_flight)
        return 7


async def started(items: int, grace_s: float) -> tuple[GracefulShutdown, GatedLoop, Releases]:
    loop = GatedLoop(items)
    task = asyncio.create_task(loop.run())
    await loop.claimed.wait()
    await loop.all_started.wait()
    releases = Releases(loop)
    shutdown = GracefulShutdown(grace_s=grace_s)
    shutdown.add(Worker("jobs", loop, task, releases))
    return shutdown, loop, releases


async def test_work_that_finishes_within_the_grace_is_not_cut() -> None:
    shutdown, loop, releases = await started(3, grace_s=30)
    drained = asyncio.create_task(shutdown.drain("SIGTERM"))
    await asyncio.sleep(0)
    assert shutdown.draining
    loop.gate.set()
    async with asyncio.timeout(5):  # a bound on a hang
        figures = await drained
    assert loop.done == 3 and loop.claims == 1
    assert figures["finished_in_grace"] is True
    assert figures["cancelled"] == {"jobs": 0} and figures["released"] == {"jobs": 7}
    assert releases.calls == [0]


async def test_work_past_the_grace_is_cancelled_before_the_release() -> None:
    shutdown, loop, releases = await started(3, grace_s=0.05)
    async with asyncio.timeout(5):
        figures = await shutdown.drain("SIGTERM")
    assert loop.done == 0
    assert figures["finished_in_grace"] is False and figures["cancelled"] == {"jobs": 3}
    assert releases.calls == [0]  # nothing of this instance runs once its leases are released


async def test_a_second_signal_cuts_the_grace_short() -> None:
    shutdown, _loop, releases = await started(2, grace_s=3600)
    shutdown.begin("SIGTERM")
    await asyncio.sleep(0)
    shutdown.begin("SIGTERM")
    async with asyncio.timeout(5):
        figures = await shutdown.wait()
    assert figures is not None and figures["cancelled"] == {"jobs": 2}
    assert releases.calls == [0]


async def test_a_failed_release_is_logged_and_the_others_still_released() -> None:
    loop = GatedLoop(0)
    task = asyncio.create_task(loop.run())
    await loop.claimed.wait()

    async def unreachable() -> int:
        raise OSError("database away")

    other = Releases(loop)
    shutdown = GracefulShutdown(grace_s=1)
    shutdown.add(Worker("webhooks", loop, task, unreachable))
    shutdown.add(Worker("archives", loop, task, other))
    with structlog.testing.capture_logs() as logs:
        figures = await shutdown.drain("SIGINT")
    assert figures["released"] == {"webhooks": None, "archives": 7}
    assert "shutdown_release_failed" in [line["event"] for line in logs]


async def test_no_work_no_wait() -> None:
    shutdown, _loop, releases = await started(0, grace_s=0.0)
    figures = await shutdown.drain("SIGTERM")
    assert figures["finished_in_grace"] is True and releases.calls == [0]
