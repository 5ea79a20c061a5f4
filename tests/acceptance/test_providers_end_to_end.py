"""Each supported model end to end over real HTTP: the service submits to the provider
simulator, follows the job by webhook (Krea, fal) or by polling (Scenario), and records it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.acceptance.stack import Stack, running_stack

MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("krea", "bfl/flux-1-dev", {"prompt": "a lighthouse", "width": 1024, "height": 768}),
    ("fal", "fal-ai/flux/krea", {"prompt": "a lighthouse", "num_images": 2}),
    ("scenario", "model_flux-krea-dev", {"prompt": "a lighthouse"}),
    (
        "scenario",
        "model_flux-kontext-editing",
        {"prompt": "make it blue", "referenceImages": ["asset_ref1"]},
    ),
    (
        "scenario",
        "model_bfl-flux-2-klein-4b-base",
        {"prompt": "a lighthouse", "width": 1024, "height": 768},
    ),
]
TERMINAL_SOURCE = {"krea": "webhook", "fal": "webhook", "scenario": "poll"}


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url) as stack:
        yield stack


def tagged(input: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The input with a unique tag in its prompt, to find the job at the simulator."""
    tag = secrets.token_hex(4)
    return {**input, "prompt": f"{input['prompt']} #{tag}"}, tag


def submissions(stack: Stack, provider: str, tag: str) -> int:
    return sum(1 for job in stack.sims.simulator(provider).jobs.values() if tag in job.prompt)


@pytest.mark.parametrize(("provider", "model", "input"), MODELS, ids=[m for _, m, _ in MODELS])
async def test_each_model_succeeds_with_outputs(
    stack: Stack, provider: str, model: str, input: dict[str, Any]
) -> None:
    body, tag = tagged(input)
    created = await stack.create(provider, model, body)
    job = await stack.wait_for(created["id"])
    assert job["status"] == "succeeded", job
    assert job["outputs"], job
    assert all(o["url"].startswith("http") for o in job["outputs"])
    assert job["provider_job_id"]
    assert job["input"] == body  # as sent, no defaults
    assert job["completed_at"] is not None
    events = await stack.events(job["id"])
    changes = [e for e in events if e["type"] == "status_changed"]
    assert changes[0]["to_status"] == "accepted"
    assert changes[-1]["to_status"] == "succeeded"
    assert changes[-1]["source"] == TERMINAL_SOURCE[provider]
    submitted = next(e for e in changes if e["to_status"] == "submitted")
    assert submitted["data"]["provider_job_id"] == job["provider_job_id"]
    assert (
        submitted["data"]["request"]["prompt"] == body["prompt"]
    )  # the request sent, with defaults
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert submissions(stack, provider, tag) == 1


async def test_outputs_are_normalised(stack: Stack) -> None:
    fal = await stack.wait_for(
        (await stack.create("fal", "fal-ai/flux/krea", {"prompt": "x", "num_images": 2}))["id"]
    )
    assert len(fal["outputs"]) == 2
    assert {o["content_type"] for o in fal["outputs"]} == {"image/jpeg"}
    assert all(o["width"] and o["height"] for o in fal["outputs"])
    krea = await stack.wait_for(
        (
            await stack.create(
                "krea", "bfl/flux-1-dev", {"prompt": "x", "width": 1024, "height": 768}
            )
        )["id"]
    )
    assert [(o["width"], o["height"]) for o in krea["outputs"]] == [(1024, 768)]


@pytest.mark.parametrize(
    ("provider", "model", "input"), MODELS[:3], ids=["krea", "fal", "scenario"]
)
async def test_a_failed_job_carries_the_providers_detail(
    stack: Stack, provider: str, model: str, input: dict[str, Any]
) -> None:
    created = await stack.create(provider, model, {**input, "prompt": "[fail] a lighthouse"})
    job = await stack.wait_for(created["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_failed"
    assert job["error"]["provider_detail"], job["error"]
    assert job["outputs"] == []
    last = [e for e in await stack.events(job["id"]) if e["type"] == "status_changed"][-1]
    assert last["source"] == TERMINAL_SOURCE[provider]


@pytest.mark.parametrize(
    ("provider", "model", "input"), MODELS[:3], ids=["krea", "fal", "scenario"]
)
async def test_cancel_is_sent_to_the_provider_and_recorded(
    stack: Stack, provider: str, model: str, input: dict[str, Any]
) -> None:
    stack.sims.simulator(provider).update_config({"queue_seconds": 30, "run_seconds": 30})
    created = await stack.create(provider, model, input)
    await stack.wait_for(created["id"], {"submitted", "queued", "running"})
    response = await stack.http.post(f"/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 202
    job = await stack.wait_for(created["id"])
    assert job["status"] == "canceled"
    types = [e["type"] for e in await stack.events(job["id"])]
    assert types.index("cancel_requested") < types.index("cancel_sent")
    sent = next(e for e in await stack.events(job["id"]) if e["type"] == "cancel_sent")
    assert sent["data"]["accepted"] is True
    assert (await stack.http.post(f"/v1/jobs/{created['id']}/cancel")).status_code == 409
