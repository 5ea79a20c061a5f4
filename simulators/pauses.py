"""Injected delays (slow answers and bodies, webhook backoff) that a reset or a shutdown ends at
once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

# How often a held request looks whether its client is still there and its delay changed.
CLIENT_CHECK_SECONDS = 0.1


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

    async def delay(
        self, arrived: float, seconds: Callable[[], float], client_gone: Callable[[], bool]
    ) -> bool:
        """Hold a request until `seconds()` have passed since it `arrived` (monotonic), reading
        the setting again every CLIENT_CHECK_SECONDS, so that a config change lengthens or ends
        the holds in progress. False when the client went away meanwhile (its request is then
        never handled: the provider did not get it); a reset or shutdown ends the hold at once.
        """
        generation, wake = self.generation, self._wake
        while generation == self.generation:
            remaining = arrived + seconds() - time.monotonic()
            if remaining <= 0:
                break
            if client_gone():
                return False
            with contextlib.suppress(TimeoutError):  # not wait_for, which can swallow a cancel
                async with asyncio.timeout(min(remaining, CLIENT_CHECK_SECONDS)):
                    await wake.wait()
        return True


def client_gone(request: web.Request) -> Callable[[], bool]:
    """Whether the client of `request` has closed its connection (aiohttp does not cancel the
    handler then, so a hold must look)."""

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone
