"""Polling a model's jobs near its observed completion time (issue 12): the window and its
steps, and the runner choosing them once the model has history."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas.jobs import JobCreate, JobStatus
from service.providers.base import Observation
from service.store.memory import MemoryJobStore
from service.workers.runner import JobRunner
from service.workers.schedule import CompletionWindow, GraceRule, PollPolicy, ProviderTiming
from tests.unit.test_runner import ScriptedAdapter

POLICY = PollPolicy(first_s=1.0, factor=1.25, max_s=5.0, jitter=0.0)
SCENARIO = ProviderTiming(webhook_grace_s=None, poll=POLICY)


def test_a_seven_second_model_is_checked_early_once_then_densely_around_seven_seconds() -> None:
    window = CompletionWindow(start_s=7.0, end_s=7.0)
    assert window.step_s == 0.25
    times, elapsed = [], 1.0  # the first look comes at the policy's first delay
    while elapsed < 8.0:
        times.append(round(elapsed, 2))
        elapsed += window.next_poll_s(elapsed_s=elapsed, backoff_s=POLICY.delay(5), max_s=5.0)
    assert times == [1.0, 6.0, 6.75, 7.0, 7.25]  # then the backoff: past p95
    # the completion at 7.0 s is seen at the check of 7.0 or 7.25: 5 requests, not 8 (backoff)


@pytest.mark.parametrize(
    ("start", "end", "step"), [(7.0, 7.0, 0.25), (5.0, 9.0, 1.0), (60.0, 600.0, 5.0)]
)
def test_the_step_divides_the_window_within_bounds(start: float, end: float, step: float) -> None:
    assert CompletionWindow(start_s=start, end_s=end).step_s == step


def test_past_the_window_the_backoff_takes_over() -> None:
    window = CompletionWindow(start_s=5.0, end_s=9.0)
    assert window.next_poll_s(elapsed_s=9.5, backoff_s=3.3, max_s=5.0) == 3.3
    assert window.next_poll_s(elapsed_s=0.5, backoff_s=1.0, max_s=5.0) == 3.5  # lands at 4.0


def test_a_window_needs_history() -> None:
    rule = GraceRule(min_samples=20)
    assert rule.window(samples=19, p10_s=7.0, p95_s=7.5) is None
    assert rule.window(samples=20, p10_s=7.0, p95_s=7.5) == CompletionWindow(7.0, 7.5)


async def test_the_runner_polls_a_model_with_history_in_its_window() -> None:
    clock = [datetime(2026, 12, 2, 10, 0, tzinfo=UTC)]
    store = MemoryJobStore(clock=lambda: clock[0])
    request = JobCreate(provider="scenario", model="model_flux-krea-dev", input={"prompt": "x"})
    for n in range(20):  # 20 recent successes, each 7 s from submission to completion
        job_id = (await store.create_job(request, idempotency_key=None)).job.id
        await store.apply_observation(
            job_id, Observation(JobStatus.SUBMITTED, provider_job_id=f"p{n}"), source="system"
        )
        clock[0] += timedelta(seconds=7)
        await store.apply_observation(job_id, Observation(JobStatus.SUCCEEDED), source="poll")
    runner = JobRunner(store=store, adapters={"scenario": ScriptedAdapter()},
                       callback_base_url="http://svc", timings={"scenario": SCENARIO})  # fmt: skip
    job_id = (await store.create_job(request, idempotency_key=None)).job.id
    record = await store.lookup(job_id)
    assert record is not None
    assert await runner._first_check_s(record, SCENARIO) == 1.0
    now = datetime.now(UTC)
    early = replace(record, submitted_at=now - timedelta(seconds=2))
    near = replace(record, submitted_at=now - timedelta(seconds=6.9))
    assert await runner._poll_delay_s(early, SCENARIO, 1) == pytest.approx(4.75, abs=0.1)
    assert await runner._poll_delay_s(near, SCENARIO, 2) == 0.25
    fresh = JobRunner(store=MemoryJobStore(), adapters={"scenario": ScriptedAdapter()},
                      callback_base_url="http://svc", timings={"scenario": SCENARIO})  # fmt: skip
    assert await fresh._poll_delay_s(near, SCENARIO, 2) == POLICY.delay(2)  # no history: backoff
