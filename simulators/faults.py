"""Injected faults decided per request or per job: the submit and poll gates, the answer lost
after a job was created, the concurrency limit, and each new job's plan (failure and how it
fails, early end, dropped webhook).

Counters (`rate_limit_next`, `server_error_next`, `error_after_submit_next`, `poll_error_next`)
are used up one per request; `submit_mode` lasts until changed; prompt markers force a fault
on one job whatever the config says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from simulators.config import ConfigState
from simulators.jobs import JobPlan
from simulators.wire import format_seconds

# Prompt markers: deterministic faults for one job, whatever the global config says.
FAIL_MARKER = "[fail]"
CONTENT_MARKER = "[content]"  # fails as a content (safety) refusal, whatever fail_reason says
DROP_CALLBACK_MARKER = "[drop-callback]"
EARLY_MARKER = "[early]"

SERVER_ERROR_MESSAGE = "simulated server error"


class ErrorResponder(Protocol):
    """Renders an error in the provider's own body shape."""

    def __call__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response: ...


@dataclass
class Faults:
    """Decides, from the config in force, which faults strike a request or a new job."""

    config_state: ConfigState[Any]
    stats: Counter[str]
    error_response: ErrorResponder
    rate_limit_message: str
    # The provider's answers to every submit under `submit_mode` "refuse" and "unavailable"
    # (the latter given `server_error_status`).
    refused_submit: Callable[[], web.Response]
    unavailable_submit: Callable[[int], web.Response]

    def before_submit(self) -> web.Response | None:
        """An injected 429 or 5xx for this submit request, if one is armed; else the refusal
        of the submit mode in force, if any."""
        state = self.config_state
        if state.consume("rate_limit_next"):
            self.stats["rate_limited"] += 1
            return self.rate_limited()
        if state.consume("server_error_next"):
            self.stats["server_errors"] += 1
            return self.error_response(state.current.server_error_status, SERVER_ERROR_MESSAGE)
        mode = state.current.submit_mode
        if mode == "refuse":
            self.stats["submits_refused"] += 1
            return self.refused_submit()
        if mode == "unavailable":
            self.stats["submits_unavailable"] += 1
            return self.unavailable_submit(state.current.server_error_status)
        return None

    def over_capacity(self, in_flight: int) -> web.Response | None:
        """A 429 for an API request that arrives while `in_flight` others are being handled,
        when that reaches `max_concurrent_requests`."""
        limit = self.config_state.current.max_concurrent_requests
        if limit is None or in_flight < limit:
            return None
        self.stats["rate_limited"] += 1
        return self.rate_limited()

    def rate_limited(self) -> web.Response:
        """The provider's 429, with `Retry-After: retry_after_seconds`."""
        retry_after = format_seconds(self.config_state.current.retry_after_seconds)
        return self.error_response(
            429, self.rate_limit_message, headers={"Retry-After": retry_after}
        )

    def before_read(self) -> web.Response | None:
        """An injected 5xx for this status, result, list or asset request, if one is armed."""
        if self.config_state.consume("poll_error_next"):
            self.stats["poll_errors"] += 1
            status = self.config_state.current.server_error_status
            return self.error_response(status, SERVER_ERROR_MESSAGE)
        return None

    def after_submit(self, request: web.Request) -> web.Response | None:
        """Hide a created job behind a 5xx or a dropped connection: an unknown outcome."""
        state = self.config_state
        if not state.consume("error_after_submit_next"):
            return None
        self.stats["errors_after_submit"] += 1
        if state.current.error_after_submit_mode == "drop":
            # Aborting the transport makes the client see the connection close with no answer;
            # the empty response below is never written.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        return self.error_response(state.current.error_after_submit_status, SERVER_ERROR_MESSAGE)

    def plan_job(self, prompt: str) -> JobPlan:
        """Decide a new job's timing and faults from the config and the prompt's markers."""
        cfg = self.config_state.current
        early = cfg.callback_early or EARLY_MARKER in prompt
        refused = CONTENT_MARKER in prompt
        return JobPlan(
            queue_s=0.0 if early else cfg.queue_seconds,
            run_s=0.0 if early else cfg.run_seconds,
            # Markers first: a job they decide takes no random draw, so the seeded sequence
            # of the other jobs stays what it was.
            will_fail=refused or FAIL_MARKER in prompt or self.config_state.draw(cfg.fail_rate),
            early=early,
            drop_callbacks=DROP_CALLBACK_MARKER in prompt,
            fail_reason="content" if refused else cfg.fail_reason,
        )
