"""When to try a failed download again: exponential backoff with jitter, a bounded number of
attempts, and never after the provider's URL has expired (an attempt then cannot succeed)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

MAX_DELAY_S = 300.0


def backoff_s(attempts_done: int, *, base_s: float) -> float:
    """Delay before attempt `attempts_done + 1`: base, 2 x base, 4 x base... capped, each with
    "equal jitter" (half fixed, half random), so archivers that failed together spread out."""
    ceiling = min(base_s * 2.0 ** (attempts_done - 1), MAX_DELAY_S)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def next_attempt_at(
    attempts_done: int,
    *,
    max_attempts: int,
    base_s: float,
    now: datetime,
    url_expires_at: datetime | None,
) -> datetime | None:
    """When to try again, or None to give up: the attempts are used up, or the URL will have
    expired by then."""
    if attempts_done >= max_attempts:
        return None
    at = now + timedelta(seconds=backoff_s(attempts_done, base_s=base_s))
    if url_expires_at is not None and at >= url_expires_at:
        return None
    return at
