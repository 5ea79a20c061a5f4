"""Webhook delivery: one timer per job that has a callback URL, then POSTs with retries.

Faults on the way: dropped, duplicated, late (`callback_delay_seconds`) and, through the
provider's `render`, badly signed or stale webhooks.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from simulators.config import ConfigState
from simulators.jobs import SimJob
from simulators.pauses import Pauses

log = logging.getLogger(__name__)

# The body and headers of one webhook attempt, rendered afresh for each (signatures, time).
Render = Callable[[SimJob], tuple[bytes, dict[str, str]]]


@dataclass
class WebhookSender:
    """Schedules, delivers and retries the webhooks of one simulator's jobs."""

    config_state: ConfigState[Any]
    stats: Counter[str]
    pauses: Pauses
    render: Render
    # Attempts per webhook when config.callback_max_attempts is None.
    default_attempts: int
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    @property
    def pending(self) -> int:
        """Webhooks scheduled or being delivered."""
        return len(self._timers) + len(self._tasks)

    def schedule(self, job: SimJob) -> None:
        """Arrange delivery of the job's webhook when it reaches its terminal state."""
        if job.callback_url is None:
            return
        self._drop_timer(job)
        delay = max(0.0, job.terminal_mono - time.monotonic())
        delay += self.config_state.current.callback_delay_seconds
        loop = asyncio.get_running_loop()
        # An empty context: a copy of the request's would keep request objects alive per job.
        self._timers[job.id] = loop.call_later(
            delay, self._start_delivery, job, context=contextvars.Context()
        )
        job.callback_state = "scheduled"

    def unschedule(self, job: SimJob) -> None:
        """Forget a webhook not yet due (a cancelled job that sends none)."""
        if self._drop_timer(job):
            job.callback_state = "none"

    def _drop_timer(self, job: SimJob) -> bool:
        timer = self._timers.pop(job.id, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def _start_delivery(self, job: SimJob) -> None:
        self._timers.pop(job.id, None)
        task = asyncio.create_task(self.deliver(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, job: SimJob) -> None:
        """Deliver (or drop) the job's webhook now, plus the configured duplicates."""
        if job.callback_url is None:
            return
        cfg = self.config_state.current
        job.callback_state = "delivering"
        if job.drop_callbacks or self.config_state.draw(cfg.callback_drop_rate):
            self.stats["callbacks_dropped"] += 1
            job.callback_state = "dropped"
            return
        for copy in range(1 + cfg.callback_duplicates):
            if copy:
                self.stats["callbacks_duplicated"] += 1
            await self._deliver_one(job, job.callback_url)
        job.callback_state = "delivered" if job.callbacks_delivered else "failed"

    async def _deliver_one(self, job: SimJob, url: str) -> bool:
        """POST one webhook, retrying non-2xx answers and timeouts per the provider's policy."""
        cfg = self.config_state.current
        attempts = cfg.callback_max_attempts or self.default_attempts
        backoff = cfg.callback_retry_base_seconds
        generation = self.pauses.generation
        for attempt in range(1, attempts + 1):
            if generation != self.pauses.generation:
                break  # reset or shutting down: this job is gone
            job.callback_attempts += 1
            self.stats["callback_attempts"] += 1
            if await self._post(job, url):
                self.stats["callbacks_sent"] += 1
                job.callbacks_delivered += 1
                return True
            self.stats["callbacks_failed"] += 1
            if attempt < attempts:
                await self.pauses.pause(min(backoff, cfg.callback_retry_max_seconds))
                backoff *= 2
        self.stats["callbacks_abandoned"] += 1
        return False

    async def _post(self, job: SimJob, url: str) -> bool:
        """One attempt; True when the receiver answered 2xx in time."""
        timeout = aiohttp.ClientTimeout(total=self.config_state.current.callback_timeout_seconds)
        body, headers = self.render(job)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout
            ) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("webhook to %s failed: %r", url, exc)
            return False

    def reset(self) -> None:
        """Abandon every scheduled and running delivery (their jobs are being forgotten)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    async def shutdown(self) -> None:
        """Abandon every delivery and wait until the running ones have stopped."""
        tasks = list(self._tasks)
        self.reset()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
