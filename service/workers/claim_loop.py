"""The loop every worker of this service runs: claim due work from PostgreSQL, start each item
as a task, then sleep until the next item is due or someone wakes the loop.

Claims are made by the subclass (by lease, with SKIP LOCKED, so instances share the work). The
loop outlives any single failure: an unreachable database or an unexpected error makes it back
off and try again, never stop. A handler that schedules its item sooner than the loop planned
to wake (the loop chose its sleep while the item still carried its lease) calls
`wake_if_sooner` once its write is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from service.errors import DatabaseUnavailable

T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


class ClaimLoop(ABC, Generic[T]):
    """Claim, start, sleep; `name` prefixes the loop's log events."""

    def __init__(self, *, name: str, batch_size: int, idle_wait_s: float, log: Any) -> None:
        self.name = name
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self._log = log
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._planned_wake: datetime | None = None
        self._stopping = False

    @abstractmethod
    async def claim(self) -> Sequence[T]:
        """Claims up to `batch_size` due items for this instance."""

    @abstractmethod
    async def handle(self, item: T) -> None:
        """Does one item's work; must not raise."""

    @abstractmethod
    async def next_due(self) -> datetime | None:
        """When the earliest unclaimed item is due (None: nothing is scheduled)."""

    @property
    def stopping(self) -> bool:
        """Set by `stop_claiming`: an item not yet started should not start (its lease is
        released at shutdown)."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def in_flight_tasks(self) -> set[asyncio.Task[None]]:
        return set(self._tasks)

    def stop_claiming(self) -> None:
        """Graceful shutdown: `run` returns before its next claim; work in flight goes on."""
        self._stopping = True
        self._wake.set()

    async def cancel_in_flight(self) -> int:
        """Cancels the work still in flight and waits for it to unwind; returns how many
        items were cancelled."""
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    def wake(self) -> None:
        """Makes the loop look for due work now."""
        self._wake.set()

    def wake_if_sooner(self, when: datetime) -> None:
        if self._planned_wake is not None and when < self._planned_wake:
            self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled, or until `stop_claiming` (then returns before its next claim)."""
        backoff = 0.5
        while not self._stopping:
            try:
                claimed = await self.run_once()
                backoff = 0.5
            except DatabaseUnavailable:
                self._log.warning(f"{self.name}_database_unavailable", retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception:
                # The loop is the instance's only worker of its kind: it must outlive any failure.
                self._log.exception(f"{self.name}_loop_failed", retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if claimed < self.batch_size and not self._stopping:
                await self._sleep(await self._idle_wait())

    async def run_once(self) -> int:
        """Claims one batch and starts its work; returns how many items were claimed."""
        self._wake.clear()
        if self._stopping:
            return 0
        items = await self.claim()
        for item in items:
            task = asyncio.create_task(self.handle(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(items)

    async def drain(self) -> None:
        """Waits for the work in progress (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.cancel_in_flight()

    async def _idle_wait(self) -> float:
        next_due = await self.next_due()
        if next_due is None:
            return self.idle_wait_s
        return min(max((next_due - now()).total_seconds(), 0.005), self.idle_wait_s)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        self._planned_wake = now() + timedelta(seconds=seconds)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the wake-up does, and the loop would then outlive its own shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._planned_wake = None
