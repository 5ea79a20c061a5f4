"""The adaptive concurrency limit: FIFO slots, AIMD on the provider's answers, Retry-After pauses.

Time is a fake clock the tests move (with the timers the limit arms on it); tasks are followed
through events and the limit's own counters, never through sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from service.metrics import REGISTRY
from service.workers.adaptive_limit import AdaptiveLimit, Slot


class FakeTime:
    """A monotonic clock that moves only when told, and runs the timers that come due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timers.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((t for t in self._timers if t[0] <= self.now), key=lambda t: t[0])
        self._timers = [t for t in self._timers if t[0] > self.now]
        for _, callback in due:
            callback()


class Request:
    """A task that takes a slot, says when it has it, and holds it until told to finish."""

    def __init__(self, limit: AdaptiveLimit) -> None:
        self.entered = asyncio.Event()
        self._finish = asyncio.Event()
        self._slot: Slot | None = None
        self.task = asyncio.create_task(self._run(limit))

    async def _run(self, limit: AdaptiveLimit) -> None:
        async with limit.slot() as slot:
            self._slot = slot
            self.entered.set()
            await self._finish.wait()

    @property
    def slot(self) -> Slot:
        assert self._slot is not None, "not entered yet"
        return self._slot

    async def finish(self) -> None:
        self._finish.set()
        await self.task


async def enter_and_note(limit: AdaptiveLimit, order: list[str], name: str) -> None:
    async with limit.slot():
        order.append(name)


async def until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until the condition holds (bounded in turns of the event loop,
    not in time: a bound on a hang)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def gauge(name: str, provider: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"provider": provider})


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    """A provider name of the test's own, so the gauges of other tests never mix in."""
    return f"limit-{request.node.name}"


async def test_waiters_are_served_in_arrival_order(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=1, maximum=1)
    order: list[str] = []
    async with limit.slot():
        waiters = [asyncio.create_task(enter_and_note(limit, order, f"w{i}")) for i in range(5)]
        await until(lambda: limit.waiting == 5)
        assert gauge("provider_requests_waiting", provider) == 5
    await asyncio.gather(*waiters)
    assert order == ["w0", "w1", "w2", "w3", "w4"]
    assert (limit.in_flight, limit.waiting) == (0, 0)
    assert gauge("provider_requests_waiting", provider) == 0


async def test_a_cancelled_waiter_leaves_the_queue(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=1, maximum=1)
    order: list[str] = []
    async with limit.slot():
        first, second, third = (
            asyncio.create_task(enter_and_note(limit, order, name)) for name in ("a", "b", "c")
        )
        await until(lambda: limit.waiting == 3)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert limit.waiting == 2
        assert gauge("provider_requests_waiting", provider) == 2
    await asyncio.gather(first, third)
    assert order == ["a", "c"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_slot_handed_over_as_its_waiter_is_cancelled_goes_to_the_next(
    provider: str,
) -> None:
    limit = AdaptiveLimit(provider, initial=1, maximum=1)
    order: list[str] = []
    async with limit.slot():
        first = asyncio.create_task(enter_and_note(limit, order, "a"))
        second = asyncio.create_task(enter_and_note(limit, order, "b"))
        await until(lambda: limit.waiting == 2)
    # The exit handed the slot to the first waiter, which has not run since.
    assert (limit.in_flight, limit.waiting) == (1, 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert order == ["b"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_the_limit_grows_by_one_per_limit_successes_up_to_the_maximum(
    provider: str,
) -> None:
    limit = AdaptiveLimit(provider, initial=1, maximum=4)
    seen = []
    for _ in range(8):
        async with limit.slot() as slot:
            slot.succeeded()
        seen.append(limit.current)
    assert seen == [2, 2, 3, 3, 3, 4, 4, 4]
    assert gauge("provider_concurrency_limit", provider) == 4


async def test_a_grown_limit_releases_the_waiters_at_once_in_order(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=1, maximum=3)
    async with limit.slot() as slot:
        first, second = Request(limit), Request(limit)
        await until(lambda: limit.waiting == 2)
        slot.succeeded()  # 1 -> 2: one more may go while this one still runs
        assert (limit.current, limit.in_flight, limit.waiting) == (2, 2, 1)
        await first.entered.wait()
        assert not second.entered.is_set()
    await first.finish()
    await second.finish()


async def test_a_429_halves_the_limit_once_per_window(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=16, maximum=32)
    sent_together = [Request(limit) for _ in range(3)]
    await until(lambda: limit.in_flight == 3)
    for request in sent_together:  # all sent before the decrease: one piece of news
        request.slot.rate_limited(None)
    assert limit.current == 8
    for request in sent_together:
        await request.finish()
    async with limit.slot() as slot:  # sent after it: news of the new window
        slot.rate_limited(None)
    assert limit.current == 4
    assert gauge("provider_concurrency_limit", provider) == 4


async def test_the_limit_never_goes_below_the_minimum(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=8, minimum=3, maximum=8)
    seen = []
    for _ in range(3):
        async with limit.slot() as slot:
            slot.rate_limited(None)
        seen.append(limit.current)
    assert seen == [4, 3, 3]
    assert gauge("provider_concurrency_limit", provider) == 3


async def test_successes_after_a_decrease_grow_it_again(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=4, maximum=4)
    async with limit.slot() as slot:
        slot.rate_limited(None)
    assert limit.current == 2
    for _ in range(2 + 3):  # 2 successes at 2, 3 at 3
        async with limit.slot() as slot:
            slot.succeeded()
    assert limit.current == 4


async def test_retry_after_pauses_new_acquisitions_then_resumes_them_in_order(
    provider: str,
) -> None:
    time = FakeTime()
    limit = AdaptiveLimit(provider, initial=4, maximum=4, clock=time, call_later=time.call_later)
    async with limit.slot() as slot:
        slot.rate_limited(5.0)
    assert limit.current == 2
    first, second, third = Request(limit), Request(limit), Request(limit)
    await until(lambda: limit.waiting == 3)
    assert limit.in_flight == 0  # room for two, but the provider asked to wait
    time.advance(4.5)
    assert (limit.in_flight, limit.waiting) == (0, 3)
    time.advance(0.5)
    assert (limit.in_flight, limit.waiting) == (2, 1)
    await first.entered.wait()
    await second.entered.wait()
    assert not third.entered.is_set()
    for request in (first, second, third):
        await request.finish()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_later_retry_after_extends_the_pause(provider: str) -> None:
    time = FakeTime()
    limit = AdaptiveLimit(provider, initial=4, maximum=4, clock=time, call_later=time.call_later)
    earlier, later = Request(limit), Request(limit)
    await until(lambda: limit.in_flight == 2)
    earlier.slot.rate_limited(5.0)
    await earlier.finish()
    waiter = Request(limit)  # waits for the pause, whose end is 5 s away now
    await until(lambda: limit.waiting == 1)
    later.slot.rate_limited(8.0)  # old news for the limit, but the provider asks for 8 s
    await later.finish()
    time.advance(5.0)
    assert (limit.in_flight, limit.waiting) == (0, 1)
    time.advance(3.0)
    assert (limit.in_flight, limit.waiting) == (1, 0)
    await waiter.entered.wait()
    await waiter.finish()
    assert limit.current == 2  # halved once


async def test_a_shrunk_limit_lets_the_running_finish_and_holds_new_ones(provider: str) -> None:
    limit = AdaptiveLimit(provider, initial=4, maximum=4)
    running = [Request(limit) for _ in range(4)]
    await until(lambda: limit.in_flight == 4)
    running[0].slot.rate_limited(None)
    assert limit.current == 2
    newcomer = Request(limit)
    await until(lambda: limit.waiting == 1)
    assert all(not request.task.done() for request in running)
    await running[0].finish()
    await running[1].finish()
    assert (limit.in_flight, limit.waiting) == (2, 1)  # two still run: at the limit
    await running[2].finish()
    assert (limit.in_flight, limit.waiting) == (2, 0)  # one ran below it: the newcomer goes
    await newcomer.entered.wait()
    await running[3].finish()
    await newcomer.finish()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_the_gauge_shows_the_initial_limit(provider: str) -> None:
    AdaptiveLimit(provider, initial=7, maximum=32)
    assert gauge("provider_concurrency_limit", provider) == 7
    assert gauge("provider_requests_waiting", provider) == 0


@pytest.mark.parametrize(
    ("initial", "minimum", "maximum"), [(0, 1, 4), (2, 3, 4), (5, 1, 4), (1, 0, 4)]
)
def test_inconsistent_bounds_are_refused(initial: int, minimum: int, maximum: int) -> None:
    with pytest.raises(ValueError, match="minimum <= initial <= maximum"):
        AdaptiveLimit("refused", initial=initial, minimum=minimum, maximum=maximum)
