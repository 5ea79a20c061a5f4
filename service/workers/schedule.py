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
