"""Submission under provider faults: retried only when the job certainly was not created,
never sent twice, final when the provider refuses it, and an unknown outcome settled by asking
the provider (its job list) or by the callback that carries the job's token."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from service.web.app import RUNNER_KEY, STORE_KEY
from service.workers.schedule import PollPolicy, ProviderTiming, RetryPolicy
from tests.acceptance.stack import FAST_TIMINGS, Stack, running_stack

QUICK_RETRY = RetryPolicy(base_s=0.01, max_s=0.05, max_attempts=4)
TIMINGS = {
    name: ProviderTiming(
        webhook_grace_s=timing.webhook_grace_s,
        poll=timing.poll if name == "scenario" else PollPolicy(first_s=0.05, max_s=0.2),
        retry=QUICK_RETRY,
        unknown_outcome_wait_s=0.3,
        lookup=PollPolicy(first_s=0.05, factor=1.5, max_s=0.2),
        callback_settle_s=0.3,
    )
    for name, timing in FAST_TIMINGS.items()
}
MODEL = {"krea": "bfl/flux-1-dev", "fal": "fal-ai/flux/krea", "scenario": "model_flux-krea-dev"}


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, timings=TIMINGS) as stack:
        for provider in MODEL:
            stack.sims.simulator(provider).update_config({"retry_after_seconds": 0})
        yield stack


async def run(
    stack: Stack, provider: str, prompt: str = "a harbour"
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    tag = secrets.token_hex(4)
    created = await stack.create(provider, MODEL[provider], {"prompt": f"{prompt} #{tag}"})
    job = await stack.wait_for(created["id"])
    sent = sum(1 for j in stack.sims.simulator(provider).jobs.values() if tag in j.prompt)
    return job, await stack.events(job["id"]), sent


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.parametrize("provider", list(MODEL))
async def test_429_is_retried_with_backoff_and_the_job_is_created_once(
    stack: Stack, provider: str
) -> None:
    stack.sims.simulator(provider).update_config({"rate_limit_next": 2})
    job, events, sent = await run(stack, provider)
    assert job["status"] == "succeeded"
    assert sent == 1
    assert types(events).count("submission_retry_scheduled") == 2
    assert types(events).count("submission_started") == 3
    retry = next(e for e in events if e["type"] == "submission_retry_scheduled")
    assert retry["data"]["status"] == 429


@pytest.mark.parametrize("provider", ["scenario", "fal"])
async def test_a_503_that_the_client_libraries_retry_is_resent_at_once(
    stack: Stack, provider: str
) -> None:
    """Scenario's SDK and fal's client retry 503 (the queue never took it)."""
    stack.sims.simulator(provider).update_config(
        {"server_error_next": 1, "server_error_status": 503}
    )
    job, events, sent = await run(stack, provider)
    assert job["status"] == "succeeded"
    assert sent == 1
    assert "submission_retry_scheduled" in types(events)
    assert "submission_outcome_unknown" not in types(events)


@pytest.mark.parametrize(("provider", "status"), [("krea", 500), ("krea", 503), ("scenario", 500)])
async def test_a_5xx_that_created_nothing_is_found_absent_in_the_job_list_and_resent(
    stack: Stack, provider: str, status: int
) -> None:
    """Krea documents no 5xx semantics and Scenario's 500 may come after creation: the job may
    exist. The provider's job list shows it does not, so it is sent again, once."""
    stack.sims.simulator(provider).update_config(
        {"server_error_next": 1, "server_error_status": status}
    )
    job, events, sent = await run(stack, provider)
    assert job["status"] == "succeeded"
    assert sent == 1
    assert types(events).count("submission_started") == 2
    lookup = next(e for e in events if e["type"] == "submission_lookup")
    assert lookup["data"]["verdict"] == "send"
    assert types(events).index("submission_outcome_unknown") < types(events).index(
        "submission_lookup"
    )


async def test_a_krea_job_created_behind_a_500_is_bound_by_its_callback_not_resent(
    stack: Stack,
) -> None:
    """The job list shows a job of the window that cannot be told apart (Krea echoes no
    input): the service waits, and the callback carrying this job's token binds it."""
    stack.sims.krea.update_config(
        {"error_after_submit_next": 1, "error_after_submit_mode": "status"}
    )
    job, events, sent = await run(stack, "krea")
    assert sent == 1
    assert job["status"] == "succeeded"
    assert job["provider_job_id"]
    assert types(events).count("submission_started") == 1
    assert "submission_lookup" not in types(events)  # waiting records nothing; binding does
    assert events[-1]["source"] == "webhook"


async def test_a_scenario_job_created_behind_a_500_is_found_by_its_echoed_input_and_bound(
    stack: Stack,
) -> None:
    stack.sims.scenario.update_config(
        {"error_after_submit_next": 1, "error_after_submit_mode": "status"}
    )
    job, events, sent = await run(stack, "scenario")
    assert sent == 1
    assert job["status"] == "succeeded"
    assert types(events).count("submission_started") == 1
    bound = next(e for e in events if e["to_status"] == "submitted")
    assert bound["data"]["verdict"] == "bind"
    assert bound["data"]["provider_job_id"] == job["provider_job_id"]


async def test_two_scenario_jobs_with_one_input_behind_500s_are_each_bound_once(
    stack: Stack,
) -> None:
    """The same input twice, both answered 500 after creation: each provider job is bound to
    one job only, so both end with a provider job of their own and nothing is sent again."""
    stack.sims.scenario.update_config(
        {"error_after_submit_next": 2, "error_after_submit_mode": "status"}
    )
    tag = secrets.token_hex(4)
    body = {"prompt": f"twins #{tag}"}
    first = await stack.create("scenario", MODEL["scenario"], body)
    second = await stack.create("scenario", MODEL["scenario"], body)
    jobs = [await stack.wait_for(first["id"]), await stack.wait_for(second["id"])]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    sent = [j for j in stack.sims.scenario.jobs.values() if tag in j.prompt]
    assert len(sent) == 2
    assert {j.id for j in sent} == {j["provider_job_id"] for j in jobs}


async def test_a_krea_job_that_cannot_be_attributed_fails_without_being_resent(
    stack: Stack,
) -> None:
    """Created behind a 500 and its callback lost: the listed job ended and no callback bound
    it, so it cannot be told from another client's job; failed, never sent twice."""
    stack.sims.krea.update_config(
        {"error_after_submit_next": 1, "error_after_submit_mode": "status"}
    )
    job, events, sent = await run(stack, "krea", "[drop-callback] a harbour")
    assert sent == 1
    assert job["status"] == "failed"
    assert job["error"]["code"] == "submission_outcome_unknown"
    assert types(events).count("submission_started") == 1
    last = events[-1]
    assert last["data"]["verdict"] == "give_up"
    assert len(last["data"]["unattributed"]) == 1


@pytest.mark.parametrize("provider", ["krea", "fal"])
async def test_unknown_outcome_is_bound_by_the_callback_carrying_the_token(
    stack: Stack, provider: str
) -> None:
    """The provider created the job but the answer was lost: never sent again, and the
    webhook (whose URL carries the job's token) binds it."""
    stack.sims.simulator(provider).update_config(
        {"error_after_submit_next": 1, "error_after_submit_mode": "drop"}
    )
    job, events, sent = await run(stack, provider)
    assert sent == 1
    assert types(events).count("submission_started") == 1
    assert "submission_outcome_unknown" in types(events)
    assert job["status"] == "succeeded"
    assert job["provider_job_id"]  # bound from the callback
    finished = [e for e in events if e["to_status"] == "succeeded"]
    assert [e["source"] for e in finished] == ["webhook"]
    # On a loaded machine the runner's give-up may come after the callback: it is recorded,
    # and changes nothing.
    later = events[events.index(finished[0]) + 1 :]
    assert all(e["to_status"] is None for e in later), later


async def test_a_fal_500_without_a_callback_fails_after_the_fallback_wait(stack: Stack) -> None:
    """fal lists no jobs: after a 500 (not one of the ingress answers its client retries) only
    the callback can tell, awaited for the fallback wait while the model has no history."""
    stack.sims.fal.update_config({"server_error_next": 1, "server_error_status": 500})
    job, events, sent = await run(stack, "fal")
    assert sent == 0
    assert job["status"] == "failed"
    assert job["error"]["code"] == "submission_outcome_unknown"
    assert events[-1]["data"]["waited_s"] == TIMINGS["fal"].unknown_outcome_wait_s
    assert types(events).count("submission_started") == 1


async def test_the_fal_wait_follows_the_models_observed_completion_times(
    database_url: str,
) -> None:
    """With a history of quick completions, an unknown fal submission waits for its callback
    as long as GraceRule says (its 10 s floor on an idle machine), not the two-minute
    fallback."""
    fallback = {**TIMINGS, "fal": replace(TIMINGS["fal"], unknown_outcome_wait_s=120.0)}
    # The runner reads the model's history afresh for every job (not once a minute).
    fresh = {"grace_refresh_s": 0.0}
    async with running_stack(database_url, timings=fallback, runner_options=fresh) as stack:
        history = [
            await stack.create("fal", MODEL["fal"], {"prompt": f"warm-up {n}"}) for n in range(20)
        ]
        for created in history:
            assert (await stack.wait_for(created["id"]))["status"] == "succeeded"
        # The history as the runner reads it when it settles the next job.
        times = await stack.service.app[STORE_KEY].completion_times("fal", MODEL["fal"])
        rule = stack.service.app[RUNNER_KEY].grace_rule
        stack.sims.fal.update_config({"server_error_next": 1, "server_error_status": 500})
        job, events, sent = await run(stack, "fal")
    assert sent == 0
    assert job["status"] == "failed"
    assert job["error"]["code"] == "submission_outcome_unknown"
    grace = rule.grace(samples=times.samples, p95_s=times.p95_s, default_s=120.0)
    assert times.samples == 20 and rule.floor_s <= grace < 120
    assert events[-1]["data"]["waited_s"] == round(grace, 3)


@pytest.mark.parametrize("provider", list(MODEL))
async def test_a_refused_submission_is_final_with_the_providers_detail(
    stack: Stack, provider: str
) -> None:
    credential = {"krea": "krea_token", "fal": "fal_key", "scenario": "scenario_api_key"}[provider]
    stack.sims.simulator(provider).update_config({credential: "rotated-elsewhere"})
    job, events, sent = await run(stack, provider)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_rejected"
    assert job["error"]["provider_detail"] is not None
    assert sent == 0
    assert types(events).count("submission_started") == 1


async def test_an_unreachable_provider_is_retried_then_fails(stack: Stack) -> None:
    await stack.sims.close()  # nothing listens on the simulators' ports any more
    created = await stack.create("krea", MODEL["krea"], {"prompt": "x"})
    job = await stack.wait_for(created["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_unavailable"
    events = await stack.events(job["id"])
    assert types(events).count("submission_started") == QUICK_RETRY.max_attempts
