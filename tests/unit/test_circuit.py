"""The circuit breaker per provider: closed -> open -> half_open (one probe) -> closed or open,
each change in its gauge, its counter and one log event. Time is a fake clock."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from service.logs import configure_logging
from service.metrics import REGISTRY
from service.workers.circuit import CircuitBreaker, Circuits, CircuitState

Events = Callable[[], list[dict[str, Any]]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    """A provider name of the test's own, so the metrics of other tests never mix in."""
    return f"circuit-{request.node.name}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch, logging_restored: None) -> Events:
    """The circuit events logged since the test began, as the JSON lines the service writes."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    structlog.reset_defaults()
    configure_logging(level="info", fmt="json")

    def read() -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in out.getvalue().splitlines())
        return [line for line in lines if line["event"].startswith("circuit_")]

    return read


def state_gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("provider_circuit_state", {"provider": provider})


def transitions(provider: str, to: str) -> float | None:
    return REGISTRY.get_sample_value(
        "provider_circuit_transitions_total", {"provider": provider, "to": to}
    )


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure()


def opened(provider: str, clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(provider, failure_threshold=5, cool_down_s=30.0, clock=clock)
    fail(breaker, 5)
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_failures_below_the_threshold_keep_it_closed_and_a_success_resets_them(
    provider: str, clock: FakeClock
) -> None:
    breaker = CircuitBreaker(provider, failure_threshold=5, clock=clock)
    fail(breaker, 4)
    breaker.record_success()
    fail(breaker, 4)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()
    assert state_gauge(provider) == 0
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN


def test_consecutive_failures_open_it(provider: str, clock: FakeClock, events: Events) -> None:
    breaker = opened(provider, clock)
    assert not breaker.allow()
    assert state_gauge(provider) == 2
    assert transitions(provider, "open") == 1
    [event] = events()
    assert event["event"] == "circuit_opened"
    assert event["level"] == "warning"
    assert (event["provider"], event["failures"], event["cool_down_s"]) == (provider, 5, 30.0)


def test_after_the_cool_down_exactly_one_probe_goes(
    provider: str, clock: FakeClock, events: Events
) -> None:
    breaker = opened(provider, clock)
    clock.advance(29.5)
    assert not breaker.allow()
    assert breaker.state is CircuitState.OPEN
    clock.advance(0.5)
    assert breaker.allow()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()
    clock.advance(10.0)
    assert not breaker.allow()  # still waiting for the probe's outcome
    assert state_gauge(provider) == 1
    assert transitions(provider, "half_open") == 1
    assert [e["event"] for e in events()] == ["circuit_opened", "circuit_half_open"]
    assert events()[1]["provider"] == provider


def test_the_probe_s_success_closes_it(provider: str, clock: FakeClock, events: Events) -> None:
    breaker = opened(provider, clock)
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()
    assert breaker.allow()
    assert state_gauge(provider) == 0
    assert transitions(provider, "closed") == 1
    closed = events()[-1]
    assert closed["event"] == "circuit_closed"
    assert (closed["provider"], closed["failures"], closed["cool_down_s"]) == (provider, 5, 30.0)
    fail(breaker, 4)  # a new count
    assert breaker.state is CircuitState.CLOSED


def test_the_probe_s_failure_opens_it_for_twice_the_cool_down_up_to_the_max(
    provider: str, clock: FakeClock, events: Events
) -> None:
    breaker = CircuitBreaker(
        provider, failure_threshold=1, cool_down_s=30.0, max_cool_down_s=100.0, clock=clock
    )
    breaker.record_failure()
    for cool_down in (30.0, 60.0, 100.0, 100.0):
        clock.advance(cool_down - 0.5)
        assert not breaker.allow()
        clock.advance(0.5)
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is CircuitState.OPEN
    opened_events = [e for e in events() if e["event"] == "circuit_opened"]
    assert [e["cool_down_s"] for e in opened_events] == [30.0, 60.0, 100.0, 100.0, 100.0]
    assert [e["failures"] for e in opened_events] == [1, 2, 3, 4, 5]
    assert transitions(provider, "open") == 5
    assert transitions(provider, "half_open") == 4


def test_closing_restores_the_first_cool_down(provider: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker(provider, failure_threshold=1, cool_down_s=30.0, clock=clock)
    breaker.record_failure()
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_failure()  # open for 60 s
    clock.advance(60.0)
    assert breaker.allow()
    breaker.record_success()
    breaker.record_failure()  # open again: for 30 s
    clock.advance(30.0)
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_probe_whose_outcome_never_comes_expires_after_the_cool_down(
    provider: str, clock: FakeClock
) -> None:
    breaker = opened(provider, clock)
    clock.advance(30.0)
    assert breaker.allow()
    clock.advance(29.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()  # a second probe
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_late_outcomes_while_open_change_nothing(provider: str, clock: FakeClock) -> None:
    breaker = opened(provider, clock)
    clock.advance(20.0)
    breaker.record_success()  # answers to requests sent before it opened
    breaker.record_failure()  # (the cool-down does not restart)
    assert breaker.state is CircuitState.OPEN
    clock.advance(10.0)
    assert breaker.allow()


def test_one_full_cycle_counts_each_transition_once(
    provider: str, clock: FakeClock, events: Events
) -> None:
    breaker = opened(provider, clock)
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success()
    assert [e["event"] for e in events()] == [
        "circuit_opened",
        "circuit_half_open",
        "circuit_closed",
    ]
    assert [transitions(provider, to) for to in ("open", "half_open", "closed")] == [1, 1, 1]


def test_circuits_holds_one_breaker_per_provider(provider: str, clock: FakeClock) -> None:
    krea, fal = f"{provider}-krea", f"{provider}-fal"
    circuits = Circuits([krea, fal], failure_threshold=2, clock=clock)
    assert circuits[krea] is circuits[krea]
    assert (state_gauge(krea), state_gauge(fal)) == (0, 0)  # visible from the start
    fail(circuits[krea], 2)
    assert circuits[krea].state is CircuitState.OPEN
    assert circuits[fal].state is CircuitState.CLOSED
    assert (state_gauge(krea), state_gauge(fal)) == (2, 0)
    with pytest.raises(KeyError):
        circuits["unknown"]


@pytest.mark.parametrize(
    ("failure_threshold", "cool_down_s", "max_cool_down_s"),
    [(0, 30.0, 300.0), (5, 0.0, 300.0), (5, 30.0, 10.0)],
)
def test_inconsistent_settings_are_refused(
    failure_threshold: int, cool_down_s: float, max_cool_down_s: float
) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(
            "refused",
            failure_threshold=failure_threshold,
            cool_down_s=cool_down_s,
            max_cool_down_s=max_cool_down_s,
        )
