"""How many API requests a simulator is handling at once, and the most it has seen.

Counted for every API request (submit, status, result, list, cancel, assets), from the moment
it is let in until its handler returns, injected delays (`slow_seconds`) and silent holds
included; never for `/_sim` routes, output files or JWKS. The `max_concurrent_requests` fault
refuses (429) a request that arrives while that many are in flight (see `Faults.over_capacity`),
and `peak` tells a test how many requests a client really sent at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class InFlight:
    """API requests being handled now, and the most at once since the last reset of `peak`."""

    def __init__(self) -> None:
        self.count = 0
        self.peak = 0

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count one request in flight for the duration of the block."""
        self.count += 1
        self.peak = max(self.peak, self.count)
        try:
            yield
        finally:
            self.count -= 1

    def reset_peak(self) -> int:
        """Start a new peak from the requests in flight now (a simulator reset does this too:
        requests still being answered cannot be forgotten, so `count` is never reset)."""
        self.peak = self.count
        return self.peak
