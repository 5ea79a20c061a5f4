"""The `silent` fault: a provider that takes jobs, then says nothing about them.

While `silent` is on, submits and cancels are answered as usual, but every status, result,
list or asset request is held open unanswered (no 5xx: a client only learns anything by giving
up), and the webhook of a job created meanwhile is held back. When `silent` goes off again the
held requests answer with the jobs as they are by then, and each held webhook goes out at its
job's end (at once for a job already over): a job that ran while the provider was quiet reports
late, which is what a client that gave up on it must be ready to ignore. A cancelled job's held
webhook follows the same rule (or is never sent, with `callback_on_cancel` off).

A held request also ends when its client closes the connection (aiohttp does not cancel the
handler, so the hold looks), and at a reset or shutdown, so that nothing holds the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from aiohttp import web

from simulators.config import ConfigState
from simulators.jobs import SimJob
from simulators.pauses import CLIENT_CHECK_SECONDS, client_gone
from simulators.webhooks import WebhookSender


class Silence:
    """The requests and webhooks held while the simulator is silent."""

    def __init__(
        self, config_state: ConfigState[Any], stats: Counter[str], webhooks: WebhookSender
    ) -> None:
        self._config_state = config_state
        self._stats = stats
        self._webhooks = webhooks
        self._release = asyncio.Event()
        self._held_jobs: list[SimJob] = []

    def holds_webhook(self, job: SimJob) -> bool:
        """Keep back the webhook of a job created now, if silent; True when held."""
        if not self._config_state.current.silent or job.callback_url is None:
            return False
        job.callback_state = "held"
        self._held_jobs.append(job)
        self._stats["callbacks_held"] += 1
        return True

    async def hold(self, request: web.Request) -> bool:
        """Leave the request unanswered while silent; False when its client went away meanwhile
        (whatever is answered then is never written)."""
        if not self._config_state.current.silent:
            return True
        self._stats["silent_holds"] += 1
        release = self._release
        gone = client_gone(request)
        while not release.is_set():
            if gone():
                return False
            with contextlib.suppress(TimeoutError):  # not wait_for, which can swallow a cancel
                async with asyncio.timeout(CLIENT_CHECK_SECONDS):
                    await release.wait()
        return True

    def end(self) -> None:
        """The provider speaks again: held requests answer, held webhooks are scheduled."""
        self.let_go()
        held, self._held_jobs = self._held_jobs, []
        for job in held:
            # A job cancelled meanwhile with callback_on_cancel off sends nothing ("none").
            if job.callback_state == "held":
                self._webhooks.schedule(job)

    def let_go(self) -> None:
        """Answer every held request now (silence over, reset or shutdown)."""
        self._release.set()
        self._release = asyncio.Event()

    def reset(self) -> None:
        """Forget the held webhooks (their jobs are being forgotten) and let requests go."""
        self._held_jobs.clear()
        self.let_go()
