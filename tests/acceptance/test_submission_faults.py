"""Submission under provider faults: retried only when the job certainly was not created,
never sent twice, and final when the provider refuses it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.workers.schedule import PollPolicy, ProviderTiming, RetryPolicy
from tests.acceptance.stack import FAST_TIMINGS, Stack, running_stack

QUICK_RETRY = RetryPolicy(base_s=0.01, max_s=0.05, max_attempts=4)
TIMINGS = {
    name: ProviderTiming(
        webhook_grace_s=timing.webhook_grace_s,
        poll=timing.poll if name == "scenario" else PollPolicy(first_s=0.05, max_s=0.2),
        retry=QUICK_RETRY,
        unknown_outcome_wait_s=0.3,
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


async def run(stack: Stack, provider: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    tag = secrets.token_hex(4)
    created = await stack.create(provider, MODEL[provider], {"prompt": f"a harbour #{tag}"})
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


@pytest.mark.parametrize(
    ("provider", "retried"), [("scenario", True), ("fal", True), ("krea", False)]
)
async def test_5xx_on_submit_follows_each_providers_semantics(
    stack: Stack, provider: str, retried: bool
) -> None:
    """Scenario's SDK and fal's client retry 5xx (503: the queue never took it); Krea documents
    nothing, so its job may exist and is not sent again."""
    stack.sims.simulator(provider).update_config(
        {"server_error_next": 1, "server_error_status": 503}
    )
    job, events, sent = await run(stack, provider)
    if retried:
        assert job["status"] == "succeeded"
        assert sent == 1
        assert "submission_retry_scheduled" in types(events)
    else:
        assert job["status"] == "failed"
        assert job["error"]["code"] == "submission_outcome_unknown"
        assert sent == 0
        assert types(events).count("submission_started") == 1


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
    assert events[-1]["source"] == "webhook"


async def test_unknown_outcome_without_callback_fails_without_resending(stack: Stack) -> None:
    stack.sims.scenario.update_config(
        {"error_after_submit_next": 1, "error_after_submit_mode": "status"}
    )
    job, events, sent = await run(stack, "scenario")
    assert sent == 1
    assert job["status"] == "failed"
    assert job["error"]["code"] == "submission_outcome_unknown"
    assert types(events).count("submission_started") == 1


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
