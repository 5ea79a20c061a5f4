"""Graceful shutdown of one instance, on SIGTERM or SIGINT.

1. Readiness (`GET /readyz`) answers 503 at once, so a load balancer stops sending; the HTTP
   server goes on serving meanwhile (callbacks of the work in flight, requests already routed).
2. The claim loops (job runner, webhook deliverer, output archiver) stop claiming; an item
   claimed but not started yet (waiting for a concurrency slot) is not started.
3. The work in flight may finish for SHUTDOWN_GRACE_S; what is left then is cancelled, and the
   writes already queued in the store's batchers are let through (bounded).
4. What this instance still holds is released, one statement per kind (jobs, webhook
   deliveries, output archives): lease cleared, due now, and a NOTIFY that wakes the other
   instances' workers, which take it over at once instead of after the lease. Releasing only
   makes the item due: a job whose submission was started but whose answer is not recorded
   stays so, and the unknown-outcome logic settles it (never sent twice).
5. aiohttp's own shutdown follows (GracefulExit): the listening socket closes, streams end,
   open requests get aiohttp's shutdown_timeout, then the app's cleanup closes the rest.

A second signal during the grace cuts the grace short (step 3 cancels at once). One log line
per phase: `shutdown_started`, `shutdown_released` (with counts and durations).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.web import GracefulExit

from service.logs import get_logger
from service.workers.claim_loop import ClaimLoop

#: How long the writes queued in the batchers by cancelled work may take to land.
SETTLE_TIMEOUT_S = 5.0
#: The most one release statement may take (the database away: the leases then run out).
RELEASE_TIMEOUT_S = 2.0
#: The longest a drain can take beyond the grace: settling, then the three releases.
DRAIN_OVERHEAD_S = SETTLE_TIMEOUT_S + 3 * RELEASE_TIMEOUT_S


@dataclass(frozen=True)
class Worker:
    """One claim loop of this instance: its running task and how to release its leases."""

    name: str  # "jobs", "webhooks", "archives": the key of its count in `shutdown_released`
    loop: ClaimLoop[Any]
    task: asyncio.Task[None]
    release: Callable[[], Awaitable[int]]


def _raise_graceful_exit() -> None:
    raise GracefulExit()


class GracefulShutdown:
    """Drains this instance's workers, releases their leases, then stops the HTTP server."""

    def __init__(
        self, *, grace_s: float, settle: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.grace_s = grace_s
        self._settle = settle
        self._workers: list[Worker] = []
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._log = get_logger("service.shutdown")
        self.draining = False

    def add(self, worker: Worker) -> None:
        self._workers.append(worker)

    def install_signal_handlers(self) -> None:
        """Replaces aiohttp's SIGTERM/SIGINT handlers (which stop the server at once) by
        `begin`; the server is stopped by it once the workers are drained and released."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin, sig.name, True)

    def begin(self, reason: str, exit_after: bool = False) -> None:
        """Starts the drain (a second call cuts the grace short)."""
        if self._task is not None:
            if not self._hurry.is_set():
                self._log.info("shutdown_hurried", signal=reason)
            self._hurry.set()
            return
        self.draining = True
        self._task = asyncio.get_running_loop().create_task(
            self._drain_then_exit(reason, exit_after), name="graceful-shutdown"
        )

    async def _drain_then_exit(self, reason: str, exit_after: bool) -> dict[str, Any]:
        try:
            return await self.drain(reason)
        finally:
            if exit_after:  # aiohttp's run_app catches it and runs its own shutdown
                asyncio.get_running_loop().call_soon(_raise_graceful_exit)

    async def wait(self) -> dict[str, Any] | None:
        """The drain's figures once it is over (None: it never began)."""
        return None if self._task is None else await self._task

    async def drain(self, reason: str) -> dict[str, Any]:
        """Steps 1-4 of the module's docstring; returns the figures it logs."""
        self.draining = True
        started = time.monotonic()
        self._log.info(
            "shutdown_started",
            signal=reason,
            grace_s=self.grace_s,
            in_flight={w.name: w.loop.in_flight for w in self._workers},
        )
        for worker in self._workers:
            worker.loop.stop_claiming()
        # Each loop returns before its next claim (one claim query at most is under way; a
        # loop still in it at the end of the grace is cancelled: what it claimed is released).
        await self._stop_loops(started + self.grace_s)
        finished = await self._wait_in_flight(started + self.grace_s)
        cancelled = {w.name: await w.loop.cancel_in_flight() for w in self._workers}
        if self._settle is not None:
            try:
                async with asyncio.timeout(SETTLE_TIMEOUT_S):
                    await self._settle()
            except TimeoutError:
                self._log.warning("shutdown_writes_unsettled", waited_s=SETTLE_TIMEOUT_S)
        drained_s = time.monotonic() - started
        release_started = time.monotonic()
        released: dict[str, int | None] = {}
        for worker in self._workers:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    released[worker.name] = await worker.release()
            except Exception as exc:  # the database is away: the leases run out instead
                released[worker.name] = None
                self._log.warning(
                    "shutdown_release_failed", worker=worker.name, error=str(exc) or repr(exc)
                )
        figures: dict[str, Any] = {
            "released": released,
            "cancelled": cancelled,
            "finished_in_grace": finished,
            "drain_s": round(drained_s, 3),
            "release_ms": round((time.monotonic() - release_started) * 1000, 1),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        self._log.info("shutdown_released", **figures)
        return figures

    async def _stop_loops(self, deadline: float) -> None:
        loops = {w.task for w in self._workers}
        if not loops:
            return
        _done, pending = await asyncio.wait(loops, timeout=max(deadline - time.monotonic(), 0.0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _wait_in_flight(self, deadline: float) -> bool:
        """Waits for the work in flight until `deadline` (or a second signal); True when it
        all finished."""
        tasks = set().union(*(w.loop.in_flight_tasks() for w in self._workers))
        if not tasks:
            return True
        # asyncio.wait, not gather: giving up on the wait must not cancel the work itself.
        everything = asyncio.ensure_future(asyncio.wait(tasks))
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait(
                {everything, hurry},
                timeout=max(deadline - time.monotonic(), 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            return everything.done()
        finally:
            for waiter in (everything, hurry):
                waiter.cancel()
            await asyncio.gather(everything, hurry, return_exceptions=True)
