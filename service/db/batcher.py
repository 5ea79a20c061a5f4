"""Write combining: many concurrent callers, one round trip (and one commit) per batch.

Callers `await batcher.submit(item)` and get their own result; meanwhile a single flusher takes
whatever has queued up (at most `max_batch`) and runs it in one call. Batches form by
themselves: while one is in flight, the next fills, so an idle service answers at once and a
busy one commits hundreds of items together. A failed flush fails every caller of that batch
(nothing of it was committed), which the caller reports as it would a single failure.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `flush(items) -> results` (same length, same order) on batches of submitted items."""

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        in_flight: int = 2,
    ) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = in_flight
        self.batches = 0
        self.items = 0
        # Items submitted and not yet answered (queued or in a flush); `settled` waits for 0.
        self._unanswered = 0
        self._settled = asyncio.Event()
        self._settled.set()

    def start(self) -> None:
        """Starts the flushers, in a context of their own: one batch serves many callers, so
        none of them lends it its context (its trace, its log fields), not even the first."""
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name="batcher", context=contextvars.Context())
                for _ in range(self._in_flight)
            ]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()
        self._unanswered = 0
        self._settled.set()

    async def submit(self, item: T) -> R:
        self.start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._unanswered += 1
        self._settled.clear()
        await self._queue.put((item, future))
        return await future

    async def settled(self) -> None:
        """Returns once every submitted item has been flushed (or failed), including those
        whose callers were cancelled meanwhile: their writes still run."""
        if self._workers:
            await self._settled.wait()

    def _answered(self, count: int) -> None:
        self._unanswered -= count
        if self._unanswered <= 0:
            self._unanswered = 0
            self._settled.set()

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [item for item, _ in batch]
            try:
                results = await self._flush(items)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                self._answered(len(batch))
                continue
            except BaseException:
                self._answered(len(batch))
                raise
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            self._answered(len(batch))
