"""`fail_reason` and the `[content]` marker: a job refused for its content, in each provider's
shape, on status polls and in webhooks; failures as errors stay exactly what they were."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from simulators import RunningSimulators
from tests.simulators.apis import PROVIDERS, ProviderApi
from tests.simulators.helpers import WebhookReceiver, configure, job_ended, stats

KREA_REFUSAL = "content policy violation: the request was flagged as NSFW by the safety filter"
SCENARIO_REFUSAL = "Content policy violation: the request was flagged as NSFW by the safety filter"
FAL_REFUSAL_MSG = (
    "The content could not be processed because it contained material flagged by a content checker."
)
FAILURE = "simulated generation failure"  # the "error" reason, as before fail_reason existed


def fal_refusal(prompt: str) -> dict[str, Any]:
    """fal's 422 body (result endpoint, ERROR webhook payload) for a refused prompt."""
    return {
        "detail": [
            {
                "loc": ["body", "prompt"],
                "msg": FAL_REFUSAL_MSG,
                "type": "content_policy_violation",
                "input": prompt,
            }
        ]
    }


async def ended(api: ProviderApi, job_id: str) -> dict[str, Any]:
    """Wait until the simulator says the job is over; return its status answer's body."""
    await job_ended(api.http, api.sims, api.provider, job_id)
    answer = await api.status(job_id)
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


# Three ways to a content refusal: the marker alone, the marker beating fail_reason "error",
# and fail_reason "content" applied to the `[fail]` marker or to fail_rate.
WAYS = [
    pytest.param("[content] a beach", {}, id="marker"),
    pytest.param("[fail] a beach", {"fail_reason": "content"}, id="fail-marker"),
    pytest.param("a beach", {"fail_rate": 1.0, "fail_reason": "content"}, id="fail-rate"),
]


@pytest.mark.parametrize(("prompt", "patch"), WAYS)
async def test_krea_refusal_is_a_failed_job_naming_the_content_policy(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    prompt: str,
    patch: dict[str, Any],
) -> None:
    await configure(http, sims, "krea", **patch)
    api = ProviderApi("krea", sims, http)

    job_id = await api.created(prompt, webhook=f"{receiver.url}/t")
    (delivery,) = await receiver.wait_for(1)
    polled = await ended(api, job_id)

    webhook = delivery.json()
    assert (webhook["status"], webhook["result"]) == ("failed", {"error": KREA_REFUSAL})
    assert webhook["completed_at"] is not None
    assert polled == webhook
    counts = await stats(http, sims, "krea")
    assert (counts["content_refusals"], counts["jobs_created"]) == (1, 1)


@pytest.mark.parametrize(("prompt", "patch"), WAYS)
async def test_fal_refusal_is_a_422_content_policy_violation(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    prompt: str,
    patch: dict[str, Any],
) -> None:
    await configure(http, sims, "fal", **patch)
    api = ProviderApi("fal", sims, http)

    job_id = await api.created(prompt, webhook=f"{receiver.url}/t")
    (delivery,) = await receiver.wait_for(1)
    status = await ended(api, job_id)
    result = await api.reads(job_id)["result"]()

    assert delivery.json() == {
        "request_id": job_id,
        "gateway_request_id": job_id,
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": fal_refusal(prompt),
    }
    assert status["status"] == "COMPLETED"
    assert (status["error"], status["error_type"]) == (
        "Invalid status code: 422",
        "content_policy_violation",
    )
    assert (result.status_code, result.json()) == (422, fal_refusal(prompt))
    assert result.headers["X-Fal-Error-Type"] == "content_policy_violation"
    assert (await stats(http, sims, "fal"))["content_refusals"] == 1


@pytest.mark.parametrize(("prompt", "patch"), WAYS)
async def test_scenario_refusal_is_a_failure_naming_the_content_policy(
    sims: RunningSimulators, http: httpx.AsyncClient, prompt: str, patch: dict[str, Any]
) -> None:
    await configure(http, sims, "scenario", **patch)
    api = ProviderApi("scenario", sims, http)

    job_id = await api.created(prompt)
    job = (await ended(api, job_id))["job"]

    assert job["status"] == "failure"
    assert job["metadata"]["error"] == SCENARIO_REFUSAL
    assert job["metadata"]["assetIds"] == []
    assert (await stats(http, sims, "scenario"))["content_refusals"] == 1


async def test_failures_as_errors_keep_their_old_shapes(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    # fail_reason "error" is the default: every provider's failure is what it always was.
    krea, fal, scenario = (ProviderApi(provider, sims, http) for provider in PROVIDERS)

    krea_id = await krea.created("[fail] k", webhook=f"{receiver.url}/k")
    fal_id = await fal.created("[fail] f")
    scenario_id = await scenario.created("[fail] s")
    (krea_hook,) = await receiver.wait_for(1)
    fal_status = await ended(fal, fal_id)
    scenario_job = (await ended(scenario, scenario_id))["job"]
    fal_result = await fal.reads(fal_id)["result"]()

    assert krea_hook.json()["result"] == {"error": FAILURE}
    assert (await ended(krea, krea_id))["result"] == {"error": FAILURE}
    assert fal_status["error_type"] == "simulated_failure"
    assert fal_result.json() == {
        "detail": [{"loc": ["body", "prompt"], "msg": FAILURE, "type": "simulated_failure"}]
    }
    assert fal_result.headers["X-Fal-Error-Type"] == "simulated_failure"
    assert (scenario_job["status"], scenario_job["metadata"]["error"]) == ("failure", FAILURE)
    for provider in PROVIDERS:
        assert (await stats(http, sims, provider))["content_refusals"] == 0


async def test_fal_invalid_input_stays_a_validation_error_under_fail_reason_content(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "fal", fail_reason="content")
    api = ProviderApi("fal", sims, http)

    submitted = await http.post(f"{api.root}/fal-ai/flux/krea", json={"steps": 3}, **api.auth)
    job_id = api.job_id(submitted)
    status = await ended(api, job_id)

    assert status["error_type"] == "validation_error"
    assert (await stats(http, sims, "fal"))["content_refusals"] == 0


async def test_fail_reason_is_validated_and_reset(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    control = sims.control_url("scenario")

    wrong = await http.post(f"{control}/config", json={"fail_reason": "nsfw"})
    changed = await configure(http, sims, "scenario", fail_reason="content")
    await http.post(f"{control}/reset")
    after = (await http.get(f"{control}/config")).json()

    assert wrong.status_code == 400
    assert (changed["fail_reason"], after["fail_reason"]) == ("content", "error")
