"""A circuit breaker per provider: a provider that keeps failing is skipped for a while, then probed.

Sending to a provider that is down spends every job's retries on requests that cannot succeed
and adds load to a provider trying to recover. So after `failure_threshold` consecutive failures
the breaker opens: `allow()` answers False and the caller defers the job instead of sending it.
Once `cool_down_s` has passed, the next `allow()` moves it to half_open and lets exactly one
request through as a probe; the others are refused until the probe's outcome is recorded. The
probe's success closes the breaker; its failure opens it again for twice the cool-down (up to
`max_cool_down_s`), so a long outage is probed less and less often. A probe whose outcome is
never recorded (its job crashed, or its answer was neutral) would hold the breaker half_open for
good: it expires after the current cool-down, and the next `allow()` sends another.

What counts as a failure is the caller's decision. The runner counts as failures of the
provider: a submit answered 5xx, unreachable or 429 after its retries, and a job the provider
failed for a reason of its own (not its content). A content refusal or a client error is an
answer of a working provider, never a failure: recorded as a success it ends a streak of
failures and lets a probe close the breaker.

Each change of state sets the gauge `provider_circuit_state` (0 closed, 1 half_open, 2 open),
counts one `provider_circuit_transitions_total{to}` and logs one event (`circuit_opened`,
`circuit_half_open`, `circuit_closed`). The states are per instance: each instance learns a
provider's outage from its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from service.logs import get_logger
from service.metrics import PROVIDER_CIRCUIT_STATE, PROVIDER_CIRCUIT_TRANSITIONS


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


# The value of `provider_circuit_state` for each state (the metric's help text says the same).
_GAUGE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

_EVENTS = {
    CircuitState.CLOSED: "circuit_closed",
    CircuitState.HALF_OPEN: "circuit_half_open",
    CircuitState.OPEN: "circuit_opened",
}


class CircuitBreaker:
    """The breaker of one provider on this instance (see the module's docstring)."""

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int = 5,
        cool_down_s: float = 30.0,
        max_cool_down_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or not 0 < cool_down_s <= max_cool_down_s:
            raise ValueError(
                f"circuit {provider}: needs failure_threshold >= 1 and "
                f"0 < cool_down_s <= max_cool_down_s, got {failure_threshold}, "
                f"{cool_down_s}, {max_cool_down_s}"
            )
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.cool_down_s = cool_down_s
        self.max_cool_down_s = max_cool_down_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0  # consecutive
        self._cool_down = cool_down_s  # of the latest opening, doubled by each failed probe
        # Open: when it opened; half_open: when the probe left. Nothing goes for a cool-down.
        self._cooling_since = 0.0
        self._state_gauge = PROVIDER_CIRCUIT_STATE.labels(provider=provider)
        self._state_gauge.set(_GAUGE_VALUES[CircuitState.CLOSED])

    @property
    def state(self) -> CircuitState:
        """The state as last changed: open until an `allow()` after the cool-down probes."""
        return self._state

    def allow(self) -> bool:
        """Whether a request may go to the provider now; in half_open, True only for the probe."""
        if self._state is CircuitState.CLOSED:
            return True
        now = self._clock()
        if now - self._cooling_since < self._cool_down:
            return False  # open and cooling down, or half_open and the probe's outcome awaited
        self._cooling_since = now
        if self._state is CircuitState.OPEN:
            self._enter(CircuitState.HALF_OPEN)
        return True  # the probe (in half_open, another: the last one's outcome never came)

    def record_success(self) -> None:
        """The provider answered as a working provider does."""
        if self._state is CircuitState.CLOSED:
            self._failures = 0
        elif self._state is CircuitState.HALF_OPEN:  # the probe answered
            self._enter(CircuitState.CLOSED)
            self._failures = 0
            self._cool_down = self.cool_down_s
        # Open: a late answer to a request sent before the breaker opened changes nothing.

    def record(self, *, healthy: bool) -> None:
        """An outcome the caller has judged: a success or a failure of the provider."""
        if healthy:
            self.record_success()
        else:
            self.record_failure()

    def record_failure(self) -> None:
        """The provider failed a request (what counts is the caller's decision)."""
        if self._state is CircuitState.OPEN:
            return  # a late failure of a request sent before the breaker opened
        if self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._enter(CircuitState.OPEN)
        else:  # half_open: the probe failed
            self._failures += 1
            self._cool_down = min(self._cool_down * 2, self.max_cool_down_s)
            self._enter(CircuitState.OPEN)

    def _enter(self, state: CircuitState) -> None:
        self._state = state
        if state is CircuitState.OPEN:
            self._cooling_since = self._clock()
        self._state_gauge.set(_GAUGE_VALUES[state])
        PROVIDER_CIRCUIT_TRANSITIONS.labels(provider=self.provider, to=state.value).inc()
        log = get_logger("service.circuit")
        emit = log.warning if state is CircuitState.OPEN else log.info
        emit(
            _EVENTS[state],
            provider=self.provider,
            failures=self._failures,
            cool_down_s=self._cool_down,
        )


class Circuits:
    """The breakers of this instance, one per provider, made alike at start (so each provider's
    gauge reads 0 from the first scrape, and wrong settings fail at start, not at first use)."""

    def __init__(
        self,
        providers: Iterable[str],
        *,
        failure_threshold: int = 5,
        cool_down_s: float = 30.0,
        max_cool_down_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breakers = {
            provider: CircuitBreaker(
                provider,
                failure_threshold=failure_threshold,
                cool_down_s=cool_down_s,
                max_cool_down_s=max_cool_down_s,
                clock=clock,
            )
            for provider in providers
        }

    def __getitem__(self, provider: str) -> CircuitBreaker:
        return self._breakers[provider]
