"""Nothing lost, nothing doubled: duplicate, early, stale and lost provider news, and deadlines,
end to end against the simulators with their faults switched on."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.jobs import JobStatus
from service.metrics import WEBHOOK_MISSES
from service.providers.base import Observation
from service.web.app import RUNNER_KEY, STORE_KEY
from service.workers.schedule import GraceRule, PollPolicy, ProviderTiming, RetryPolicy
from simulators import SimulatorConfig
from tests.acceptance.stack import FAST_TIMINGS, Stack, running_stack

MODEL = {"krea": "bfl/flux-1-dev", "fal": "fal-ai/flux/krea", "scenario": "model_flux-krea-dev"}
WEBHOOK_PROVIDERS = ["krea", "fal"]


def timings(*, grace_s: float) -> dict[str, ProviderTiming]:
    return {
        name: ProviderTiming(
            webhook_grace_s=grace_s if name in WEBHOOK_PROVIDERS else None,
            poll=timing.poll if name == "scenario" else PollPolicy(first_s=0.05, max_s=0.2),
            retry=RetryPolicy(base_s=0.01, max_s=0.05),
            unknown_outcome_wait_s=5,
        )
        for name, timing in FAST_TIMINGS.items()
    }


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, timings=timings(grace_s=120)) as stack:
        yield stack


@pytest.fixture
async def impatient(database_url: str) -> AsyncIterator[Stack]:
    """Webhooks get 0.2 s before the job is checked by poll."""
    async with running_stack(database_url, timings=timings(grace_s=0.2)) as stack:
        yield stack


async def run(
    stack: Stack, provider: str, prompt: str = "a harbour"
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    tag = secrets.token_hex(4)
    created = await stack.create(provider, MODEL[provider], {"prompt": f"{prompt} #{tag}"})
    job = await stack.wait_for(created["id"])
    sent = sum(1 for j in stack.sims.simulator(provider).jobs.values() if tag in j.prompt)
    return job, await stack.events(job["id"]), sent


def changes(events: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(e["from_status"], e["to_status"]) for e in events if e["type"] == "status_changed"]


def assert_each_step_once(events: list[dict[str, Any]]) -> None:
    steps = changes(events)
    assert len(steps) == len(set(steps)), steps
    reached = [to for _, to in steps]
    assert len(reached) == len(set(reached)), reached


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_the_same_webhook_three_times_is_one_step(stack: Stack, provider: str) -> None:
    stack.sims.simulator(provider).update_config({"callback_duplicates": 2})
    job, _events, sent = await run(stack, provider)
    assert job["status"] == "succeeded"
    assert sent == 1
    # Wait until all three deliveries are committed, then check the history.
    async with stack.watcher.changed:
        while len(ignored_webhooks(await stack.events(job["id"]))) < 2:
            await stack.watcher.changed.wait()
    events = await stack.events(job["id"])
    assert_each_step_once(events)
    assert [e["data"]["reason"] for e in ignored_webhooks(events)] == ["duplicate"] * 2
    # On a loaded machine the first webhook can be committed before the submission's own
    # answer: that answer is then ignored as stale, and is the only other news ignored.
    others = [e for e in events if e["type"] == "observation_ignored" and e["source"] != "webhook"]
    assert [(e["source"], e["data"]["reason"]) for e in others] in ([], [("system", "stale")])
    assert changes(events)[-1] == ("submitted", "succeeded")


def ignored_webhooks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "observation_ignored" and e["source"] == "webhook"]


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_a_webhook_and_a_poll_reporting_the_same_state_make_one_step(
    impatient: Stack, provider: str
) -> None:
    """The webhook comes late (after the grace), so a poll finds the job done first; the webhook
    then arrives and is recorded, but does not repeat the step."""
    impatient.sims.simulator(provider).update_config({"callback_delay_seconds": 0.6})
    job, events, sent = await run(impatient, provider)
    assert sent == 1
    late = await impatient.wait_for_event(job["id"], "observation_ignored")
    events = await impatient.events(job["id"])
    assert_each_step_once(events)
    final = next(
        e for e in events if e["type"] == "status_changed" and e["to_status"] == "succeeded"
    )
    assert final["source"] == "poll"
    assert final["data"]["webhook_missed"] is True
    assert (late["source"], late["data"]["observed_status"], late["data"]["reason"]) == (
        "webhook",
        "succeeded",
        "duplicate",
    )


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_an_early_webhook_is_applied_and_binds_the_job(stack: Stack, provider: str) -> None:
    """The provider calls back before answering the submit: the webhook is not lost, and the
    submit answer that follows neither moves the job back nor is dropped from the record."""
    job, events, sent = await run(stack, provider, prompt="[early] a harbour")
    assert sent == 1
    assert job["status"] == "succeeded"
    assert job["provider_job_id"]
    assert_each_step_once(events)
    assert changes(events) == [(None, "accepted"), ("accepted", "succeeded")]
    answer = await stack.wait_for_event(job["id"], "observation_ignored")
    assert answer["data"]["observed_status"] == "submitted"
    assert answer["data"]["reason"] == "stale"
    assert answer["data"]["request"]["prompt"].startswith("[early]")  # the request sent is kept
    assert answer["data"]["provider_job_id"] == job["provider_job_id"]


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_a_lost_webhook_is_caught_by_polling_and_counted(
    impatient: Stack, provider: str
) -> None:
    misses = WEBHOOK_MISSES.labels(provider=provider)._value.get()
    job, events, sent = await run(impatient, provider, prompt="[drop-callback] a harbour")
    assert sent == 1
    assert job["status"] == "succeeded"
    assert job["outputs"]
    final = [e for e in events if e["type"] == "status_changed"][-1]
    assert (final["source"], final["data"]["webhook_missed"]) == ("poll", True)
    assert WEBHOOK_MISSES.labels(provider=provider)._value.get() == misses + 1


async def test_stale_poll_news_never_moves_a_job_back(stack: Stack) -> None:
    job, _events, _sent = await run(stack, "krea")
    assert job["status"] == "succeeded"
    store = stack.service.app[STORE_KEY]
    for stale in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUBMITTED):
        result = await store.apply_observation(job["id"], Observation(stale), source="poll")
        assert not result.applied
    assert (await stack.job(job["id"]))["status"] == "succeeded"
    # The same events (ids), none added; their seals may have been filled in meanwhile.
    assert [e["id"] for e in await stack.events(job["id"])] == [e["id"] for e in _events]


@pytest.mark.parametrize("provider", ["krea", "fal", "scenario"])
async def test_no_news_before_the_deadline_ends_the_job_as_provider_timeout(
    database_url: str, provider: str
) -> None:
    slow = SimulatorConfig(queue_seconds=60, run_seconds=60)
    async with running_stack(database_url, sim_config=slow, timings=timings(grace_s=0.2)) as stack:
        store = stack.service.app[STORE_KEY]
        created = await stack.create(provider, MODEL[provider], {"prompt": "a slow harbour"})
        await stack.wait_for(created["id"], {"submitted", "queued", "running"})
        # Bring the deadline forward, as if the configured hard timeout had passed.
        async with store.db.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET deadline_at = clock_timestamp(), next_action_at = clock_timestamp() WHERE id = $1",
                created["id"],
            )
        stack.service.app[RUNNER_KEY].wake()
        job = await stack.wait_for(created["id"])
        assert job["status"] == "failed"
        assert job["error"]["code"] == "provider_timeout"
        sent = await stack.wait_for_event(job["id"], "cancel_sent")
        assert sent["data"]["reason"] == "deadline"
        assert sent["data"]["accepted"] is True


def test_webhook_grace_follows_the_observed_completion_times() -> None:
    rule = GraceRule(factor=2.0, margin_s=5.0, floor_s=10.0, ceiling_s=600.0, min_samples=20)
    assert rule.grace(samples=5, p95_s=3.0, default_s=120) == 120  # too little history
    assert rule.grace(samples=50, p95_s=7.0, default_s=120) == 19.0
    assert rule.grace(samples=50, p95_s=0.5, default_s=120) == 10.0
    assert rule.grace(samples=50, p95_s=900.0, default_s=120) == 600.0


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_the_runner_gives_a_webhook_the_grace_of_the_models_observed_times(
    database_url: str, provider: str
) -> None:
    """After 20 quick completions of the model, a job whose webhook is lost is checked by poll
    after the grace GraceRule makes of them (its 10 s floor on an idle machine; more when the
    machine is so loaded that the quick jobs took seconds), not after the 120 s default."""
    fresh = {"grace_refresh_s": 0.0}  # read the model's history for every job
    async with running_stack(
        database_url, timings=timings(grace_s=120), runner_options=fresh
    ) as stack:
        history = [
            await stack.create(provider, MODEL[provider], {"prompt": f"warm-up {n}"})
            for n in range(20)
        ]
        for created in history:
            assert (await stack.wait_for(created["id"]))["status"] == "succeeded"
        # The history as the runner reads it when it submits the next job.
        times = await stack.service.app[STORE_KEY].completion_times(provider, MODEL[provider])
        rule = stack.service.app[RUNNER_KEY].grace_rule
        job, events, sent = await run(stack, provider, "[drop-callback] a harbour")
        first = await stack.events(history[0]["id"])
    assert sent == 1
    assert times.samples == 20 and times.p95_s is not None
    grace = rule.grace(samples=times.samples, p95_s=times.p95_s, default_s=120)
    assert rule.floor_s <= grace < 120
    submitted = next(e for e in events if e["to_status"] == "submitted")
    assert submitted["data"]["first_check_s"] == round(grace, 3)
    assert job["status"] == "succeeded"
    assert events[-1]["source"] == "poll"
    assert events[-1]["data"]["webhook_missed"] is True
    # The history's own jobs were submitted before any history existed: the default grace.
    assert next(e for e in first if e["to_status"] == "submitted")["data"]["first_check_s"] == 120
