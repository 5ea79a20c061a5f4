"""The claim loop stops when cancelled, even when the cancel arrives as it is woken (Python
3.11's asyncio.wait_for swallowed such a cancel: the loop outlived the app's shutdown, which
hung the suite's teardown on a loaded machine)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import pytest
import structlog

from service.workers.claim_loop import ClaimLoop


class IdleLoop(ClaimLoop[int]):
    def __init__(self) -> None:
        super().__init__(name="idle", batch_size=10, idle_wait_s=30.0, log=structlog.get_logger())
        self.claims = 0
        self.claimed = asyncio.Event()

    async def claim(self) -> Sequence[int]:
        self.claims += 1
        self.claimed.set()
        return []

    async def handle(self, item: int) -> None:
        del item

    async def next_due(self) -> datetime | None:
        return None


async def test_a_cancel_that_arrives_with_a_wake_up_stops_the_loop() -> None:
    loop = IdleLoop()
    task = asyncio.create_task(loop.run())
    await loop.claimed.wait()
    await asyncio.sleep(0)  # now asleep until woken
    loop.wake()
    task.cancel()  # in the same turn of the event loop as the wake-up
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):  # a bound on a hang, not a measurement
            await task
    assert task.cancelled()
    assert loop.claims == 1
