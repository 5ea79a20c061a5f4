"""Routed jobs end to end over real HTTP (CONTRACT.md, Routing across providers): the common
input validated and translated, the first provider that can take the job tried first, and the
next one only when the rules say so, with every attempt in the job and in its events."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.acceptance.stack import Stack, running_stack

ROUTED = "flux-1-krea-dev"


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url) as stack:
        yield stack


def tagged(prompt: str = "a lighthouse", **more: Any) -> tuple[dict[str, Any], str]:
    tag = secrets.token_hex(4)
    return {"prompt": f"{prompt} #{tag}", **more}, tag


def submissions(stack: Stack, provider: str, tag: str) -> int:
    return sum(1 for job in stack.sims.simulator(provider).jobs.values() if tag in job.prompt)


def of_type(events: list[dict[str, Any]], type: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type]


async def test_a_routed_job_runs_on_the_first_provider_of_its_route(stack: Stack) -> None:
    body, tag = tagged(width=1024, height=768, steps=20, guidance=4.0, seed=7)
    created = await stack.create("auto", ROUTED, body)
    assert (created["provider"], created["model"], created["input"]) == ("fal", ROUTED, body)
    job = await stack.wait_for(created["id"])
    assert job["status"] == "succeeded", job
    assert [(a["provider"], a["model"], a["status"]) for a in job["attempts"]] == [
        ("fal", "fal-ai/flux/krea", "succeeded")
    ]
    assert job["attempts"][0]["provider_job_id"] == job["provider_job_id"]
    events = await stack.events(created["id"])
    [started] = of_type(events, "attempt_started")
    assert started["data"]["provider"] == "fal" and started["data"]["adjustments"] == {}
    request = started["data"]["request"]
    assert request["image_size"] == {"width": 1024, "height": 768}
    assert (request["num_inference_steps"], request["guidance_scale"], request["seed"]) == (
        20,
        4.0,
        7,
    )
    assert (submissions(stack, "fal", tag), submissions(stack, "scenario", tag)) == (1, 0)
    assert of_type(events, "attempt_failed") == []


async def test_a_provider_that_cannot_serve_the_input_is_passed_over(stack: Stack) -> None:
    body, tag = tagged(guidance=0.5, width=1000, height=700)  # fal's guidance_scale is 1..20
    created = await stack.create("auto", ROUTED, body)
    assert created["provider"] == "scenario"
    job = await stack.wait_for(created["id"])
    assert job["status"] == "succeeded", job
    assert [(a["provider"], a["status"]) for a in job["attempts"]] == [("scenario", "succeeded")]
    events = await stack.events(created["id"])
    assert "fal" in events[0]["data"]["passed_over"]
    [started] = of_type(events, "attempt_started")
    assert started["data"]["request"]["aspectRatio"] == "3:2"
    assert started["data"]["adjustments"]["size"]["asked"] == [1000, 700]
    assert (submissions(stack, "fal", tag), submissions(stack, "scenario", tag)) == (0, 1)


async def test_an_input_no_provider_can_serve_is_refused_before_anything_is_recorded(
    database_url: str,
) -> None:
    async with running_stack(database_url, settings={"routes": "flux-1-krea-dev=fal"}) as stack:
        response = await stack.http.post(
            "/v1/jobs", json={"provider": "auto", "model": ROUTED,
                              "input": {"prompt": "x", "guidance": 0.5}},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "no_provider_available"
        assert "guidance" in error["details"][0]["msg"]
        assert (await stack.http.get("/v1/jobs")).json()["jobs"] == []


async def test_routed_requests_are_validated_as_the_common_schema(stack: Stack) -> None:
    cases = [
        ({"provider": "auto", "model": "no-such-model", "input": {"prompt": "x"}}, "model"),
        ({"provider": "auto", "model": ROUTED, "input": {"num_images": 2}}, "prompt"),
        ({"provider": "auto", "model": ROUTED, "input": {"prompt": "x", "num_images": 5}},
         "num_images"),
        ({"provider": "auto", "model": ROUTED, "input": {"prompt": "x", "image_size": "a"}},
         "image_size"),
    ]  # fmt: skip
    for body, field in cases:
        response = await stack.http.post("/v1/jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        assert any(field in d["loc"] for d in response.json()["error"]["details"]), response.text


async def test_a_disabled_provider_is_passed_over(database_url: str) -> None:
    async with running_stack(database_url, settings={"fal_key": None}) as stack:
        body, tag = tagged()
        created = await stack.create("auto", ROUTED, body)
        assert created["provider"] == "scenario"
        job = await stack.wait_for(created["id"])
        assert job["status"] == "succeeded", job
        events = await stack.events(created["id"])
        assert "no credentials" in events[0]["data"]["passed_over"]["fal"]
        assert submissions(stack, "scenario", tag) == 1
