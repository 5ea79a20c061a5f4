"""Injected delays (slow answers, webhook backoff) that a reset or a shutdown ends at once."""

from __future__ import annotations

import asyncio
import contextlib


class Pauses:
    """Sleeps that `interrupt()` cuts short, so that no injected delay holds the server.

    `generation` grows with every interrupt: work that started before one (a webhook still
    being retried) sees it changed and gives up.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._wake = asyncio.Event()

    def interrupt(self) -> None:
        """End every pause in progress and start a new generation."""
        self.generation += 1
        self._wake.set()
        self._wake = asyncio.Event()

    async def pause(self, seconds: float) -> bool:
        """Sleep for an injected delay; return True if an interrupt cut it short."""
        generation, wake = self.generation, self._wake
        with contextlib.suppress(TimeoutError):  # not wait_for, which can swallow a cancel
            async with asyncio.timeout(seconds):
                await wake.wait()
        return generation != self.generation
