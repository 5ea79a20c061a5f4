"""When to act on a job next: first checks, polling backoff with jitter, retry delays."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings


@dataclass(frozen=True)
class PollPolicy:
    """Quick first checks, then exponential backoff with jitter, bounded."""

    first_s: float = 1.0
    factor: float = 1.25
    max_s: float = 5.0
    jitter: float = 0.2  # +-20 %

    def delay(self, checks_done: int) -> float:
        base = min(self.first_s * self.factor ** max(checks_done, 0), self.max_s)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class CompletionWindow:
    """Where most of a model's recent jobs finished, in seconds after submission (p10..p95 of
    its recent successes). A polled job is checked at `step_s` inside it, so its completion is
    noticed within a step; before it, at most every `max_s` (the policy's longest delay), so an
    early failure or a cancel is still seen; after it, on the policy's backoff. `step_s` divides
    the window in four, within [0.25 s, 5 s]: a model that always takes 7 s is checked at 1 s,
    6 s, then every 0.25 s from 6.75 s; one that takes 1 to 10 minutes every 5 s."""

    start_s: float
    end_s: float

    @property
    def step_s(self) -> float:
        return min(max((self.end_s - self.start_s) / 4, 0.25), 5.0)

    def next_poll_s(self, *, elapsed_s: float, backoff_s: float, max_s: float) -> float:
        """How long until the next status request, `elapsed_s` after submission, given the
        policy's backoff delay for this check and its longest delay."""
        opens = self.start_s - self.step_s  # one step early: the earliest jobs are caught too
        if elapsed_s < opens:
            return min(opens - elapsed_s, max_s)
        if elapsed_s <= self.end_s:
            return self.step_s
        return backoff_s


@dataclass(frozen=True)
class RetryPolicy:
    """Submission retries after 429 or a connection that could not be opened."""

    base_s: float = 1.0
    max_s: float = 60.0
    max_attempts: int = 6

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        backoff = min(self.base_s * 2 ** max(attempt - 1, 0), self.max_s) * random.uniform(0.5, 1.5)
        return float(max(backoff, retry_after or 0.0))


@dataclass(frozen=True)
class ProviderTiming:
    """Per provider: how long to wait for a webhook before checking, how to poll, retries."""

    webhook_grace_s: float | None  # None: the provider is polled from the start (Scenario)
    poll: PollPolicy
    retry: RetryPolicy = RetryPolicy()
    #: Where the provider lists no jobs (fal): how long a submission whose outcome is unknown
    #: waits for the callback that binds it, until the model has a history of completion times
    #: (then GraceRule's bound from them).
    unknown_outcome_wait_s: float = 120.0
    #: When to read the provider's job list again to settle an unknown outcome.
    lookup: PollPolicy = PollPolicy(first_s=2.0, factor=1.5, max_s=15.0)
    #: How long after a listed job ended its callback may still arrive.
    callback_settle_s: float = 15.0
    #: How soon to look again after a cancel was sent.
    after_cancel_s: float = 1.0


DEFAULT_TIMINGS: dict[str, ProviderTiming] = {
    "krea": ProviderTiming(webhook_grace_s=120.0, poll=PollPolicy(first_s=5.0, max_s=30.0)),
    "fal": ProviderTiming(webhook_grace_s=120.0, poll=PollPolicy(first_s=5.0, max_s=30.0)),
    "scenario": ProviderTiming(webhook_grace_s=None, poll=PollPolicy()),
}


def timings_from_settings(settings: Settings) -> dict[str, ProviderTiming]:
    """The default timings with the configured webhook grace and bind wait."""
    timings = {}
    for name, timing in DEFAULT_TIMINGS.items():
        grace = settings.webhook_grace_s if timing.webhook_grace_s is not None else None
        timings[name] = replace(
            timing, webhook_grace_s=grace, unknown_outcome_wait_s=settings.submission_bind_wait_s
        )
    return timings


@dataclass(frozen=True)
class GraceRule:
    """How long to wait for a webhook before checking: p95 of the model's recent completion
    times times `factor` plus `margin_s`, within [floor_s, ceiling_s]; the configured default
    until there are `min_samples` recent completions."""

    factor: float = 2.0
    margin_s: float = 5.0
    floor_s: float = 10.0
    ceiling_s: float = 1800.0
    min_samples: int = 20

    def grace(self, *, samples: int, p95_s: float | None, default_s: float) -> float:
        if samples < self.min_samples or p95_s is None:
            return default_s
        return min(max(p95_s * self.factor + self.margin_s, self.floor_s), self.ceiling_s)

    def window(
        self, *, samples: int, p10_s: float | None, p95_s: float | None
    ) -> CompletionWindow | None:
        """The completion window of a model with enough history (None: not yet)."""
        if samples < self.min_samples or p10_s is None or p95_s is None:
            return None
        return CompletionWindow(start_s=p10_s, end_s=p95_s)
