"""The claim loop ends when cancelled, even when it is woken in the same instant."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import structlog

from service.workers.claim_loop import ClaimLoop


class Idle(ClaimLoop[int]):
    def __init__(self) -> None:
        super().__init__(
            name="idle", batch_size=10, idle_wait_s=60.0, log=structlog.get_logger("test")
        )
        self.sleeping = asyncio.Event()

    async def claim(self) -> Sequence[int]:
        return []

    async def handle(self, item: int) -> None:
        return None

    async def next_due(self) -> datetime | None:
        self.sleeping.set()  # the loop goes to sleep right after this
        return None


async def test_a_cancel_right_after_a_wake_ends_the_loop() -> None:
    loop = Idle()
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(loop.sleeping.wait(), 5)
    await asyncio.sleep(0)  # now waiting on the wake event
    loop.wake()  # (a NOTIFY arrives during shutdown)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the loop missed its cancel and would hold up the shutdown"
    assert task.cancelled()
