"""A concurrency limit per provider that follows what the provider answers (AIMD, as TCP does).

A fixed limit is wrong both ways: too low for a provider that could take more, too high for one
that answers 429 because it is saturated (each 429 is a request spent and a job delayed). So the
limit moves like TCP's congestion window:

- additive increase: every `limit` successful requests raise it by one (about +1 per round of
  requests), up to `maximum`;
- multiplicative decrease: a 429 halves it (never below `minimum`), at most once per window. A
  429 of a request sent before the last decrease carries old news (it was sent while more were
  in flight) and does not halve again; windows are numbered by an epoch each decrease advances;
- `Retry-After`: no new request leaves for the provider before that time, since it asked us to
  wait. Requests waiting for a slot keep their place in the queue meanwhile.

Slots are handed out first come, first served; a shrunken limit never interrupts a running
request, it only holds new ones until fewer than `limit` are in flight.

Shared across instances without coordination: each instance adapts on its own observations.
The instances share the provider's capacity (one account, one rate limit) the way TCP flows
share a link. When the sum of their limits goes beyond that capacity, the provider answers 429
to whoever sends beyond it, and every instance that keeps sending sees some of them and halves;
in between, each grows by one per round. Halving shrinks the gap between two instances' limits
while the additive increase keeps it, so the limits converge to fair shares whose sum oscillates
just under the capacity (Chiu and Jain, 1989), with no shared state and no extra round trip per
request. The price: N instances probe N times as fast, so the sum may overshoot by up to N per
round before the next 429 brings it back, which a handful of instances can afford. An instance
with little work does not use its share and the others grow into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from service.metrics import PROVIDER_CONCURRENCY_LIMIT, PROVIDER_REQUESTS_WAITING

#: Runs a callback after a delay in seconds (the signature of asyncio's loop.call_later).
CallLater = Callable[[float, Callable[[], None]], object]


def _call_later_on_running_loop(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


class Slot:
    """One request's place under the limit, and where the request's outcome is reported.

    Report at most one outcome per request sent. Report nothing when the outcome says nothing
    about the provider's capacity (a network error, a client error, a content refusal).
    """

    __slots__ = ("_epoch", "_limit")

    def __init__(self, limit: AdaptiveLimit, epoch: int) -> None:
        self._limit = limit
        self._epoch = epoch

    def succeeded(self) -> None:
        """The provider answered: one success toward the next increase of the limit."""
        self._limit._count_success()

    def rate_limited(self, retry_after: float | None = None) -> None:
        """The provider answered 429: halve the limit (once per window) and, with a Retry-After
        of so many seconds, send it nothing new until then."""
        self._limit._back_off(self._epoch, retry_after)


class AdaptiveLimit:
    """Slots for the requests of one provider, first come first served, under a limit that
    adapts to the provider's answers (see the module's docstring).

    `clock` and `call_later` are injectable for tests: `call_later` must run its callback once
    `clock` has advanced by the delay (the defaults, time.monotonic and the running loop's
    call_later, agree).
    """

    def __init__(
        self,
        name: str,
        *,
        initial: int,
        minimum: int = 1,
        maximum: int,
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater = _call_later_on_running_loop,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError(
                f"limit {name}: needs 1 <= minimum <= initial <= maximum, "
                f"got {minimum}, {initial}, {maximum}"
            )
        self.name = name
        self.minimum = minimum
        self.maximum = maximum
        self._clock = clock
        self._call_later = call_later
        self._limit = initial
        self._successes = 0  # toward the next increase
        self._epoch = 0  # advanced by each decrease: a 429 of an older epoch is old news
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._paused_until = -math.inf  # Retry-After: nothing new leaves before this time
        self._wake_up_armed = False
        self._limit_gauge = PROVIDER_CONCURRENCY_LIMIT.labels(provider=name)
        self._waiting_gauge = PROVIDER_REQUESTS_WAITING.labels(provider=name)
        self._limit_gauge.set(initial)
        self._waiting_gauge.set(0)

    @property
    def current(self) -> int:
        """How many requests may be in flight at once now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held (more than `current` for a while after a decrease)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Acquirers queued for a slot."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Waits for a slot in arrival order, holds it for the block, gives it back on exit."""
        await self._acquire()
        try:
            yield Slot(self, self._epoch)
        finally:
            self._release()

    async def _acquire(self) -> None:
        if not self._waiters and self._in_flight < self._limit and not self._paused():
            self._in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):  # _dispatch may have dropped it already
                    self._waiters.remove(waiter)
                self._waiting_gauge.set(len(self._waiters))
            else:  # the slot was handed over as the cancel came: hand it on
                self._release()
            raise

    def _release(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _paused(self) -> bool:
        return self._clock() < self._paused_until

    def _dispatch(self) -> None:
        """Hands free slots to the waiters, oldest first, unless a Retry-After holds them all."""
        while self._waiters and self._in_flight < self._limit:
            pause_left = self._paused_until - self._clock()
            if pause_left > 0:
                self._wake_up_after(pause_left)
                break
            waiter = self._waiters.popleft()
            if not waiter.cancelled():  # a cancelled waiter is leaving on its own
                waiter.set_result(None)
                self._in_flight += 1
        self._waiting_gauge.set(len(self._waiters))

    def _wake_up_after(self, delay: float) -> None:
        """One pending wake-up at a time; if the pause was extended meanwhile (or a timer fires
        a little early), the wake-up finds it not over and arms itself again."""
        if not self._wake_up_armed:
            self._wake_up_armed = True
            self._call_later(delay, self._wake_up)

    def _wake_up(self) -> None:
        self._wake_up_armed = False
        self._dispatch()

    def _count_success(self) -> None:
        if self._limit == self.maximum:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._set_limit(self._limit + 1)
            self._dispatch()

    def _back_off(self, epoch: int, retry_after: float | None) -> None:
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
        if epoch == self._epoch:
            self._epoch += 1
            self._successes = 0
            self._set_limit(max(self.minimum, self._limit // 2))

    def _set_limit(self, limit: int) -> None:
        self._limit = limit
        self._limit_gauge.set(limit)
