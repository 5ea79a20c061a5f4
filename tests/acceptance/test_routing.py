"""Routed jobs end to end over real HTTP (CONTRACT.md, Routing across providers): the common
input validated and translated, the first provider that can take the job tried first, and the
next one only when the rules say so, with every attempt in the job and in its events."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from service.web.app import RUNNER_KEY
from service.workers.schedule import DEFAULT_TIMINGS, RetryPolicy
from tests.acceptance.stack import FAST_TIMINGS, Stack, running_stack

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


# --- failover: one provider failing while the other works ------------------------------------


async def configure(stack: Stack, provider: str, **config: Any) -> None:
    """One simulator's faults, set over its own fault API (the others keep theirs)."""
    base = {"krea": stack.sims.krea_url, "fal": stack.sims.fal_url,
            "scenario": stack.sims.scenario_url.removesuffix("/v1")}[provider]  # fmt: skip
    response = await stack.http.post(f"{base}/_sim/config", json=config)
    assert response.status_code == 200, response.text


def sim_stats(stack: Stack, provider: str) -> dict[str, int]:
    return dict(stack.sims.simulator(provider).stats)


def attempts_of(job: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(a["provider"], a["status"], (a["error"] or {}).get("code")) for a in job["attempts"]]


FAST_FAL_RETRIES = {
    **FAST_TIMINGS,
    "fal": replace(
        DEFAULT_TIMINGS["fal"], retry=RetryPolicy(base_s=0.01, max_s=0.02, max_attempts=3)
    ),
}


async def test_with_fal_refusing_every_submit_routed_jobs_succeed_on_scenario(
    stack: Stack,
) -> None:
    await configure(stack, "fal", submit_mode="refuse")
    bodies = [tagged() for _ in range(3)]
    created = [await stack.create("auto", ROUTED, body) for body, _ in bodies]
    for job, (_, tag) in zip(created, bodies, strict=True):
        done = await stack.wait_for(job["id"])
        assert done["status"] == "succeeded", done
        assert done["provider"] == "scenario"
        assert attempts_of(done) == [
            ("fal", "failed", "provider_rejected"), ("scenario", "succeeded", None)
        ]  # fmt: skip
        assert submissions(stack, "scenario", tag) == 1
        events = await stack.events(job["id"])
        [failed] = of_type(events, "attempt_failed")
        assert failed["data"]["provider"] == "fal" and failed["data"]["error"]["provider_detail"]
        assert [e["data"]["provider"] for e in of_type(events, "attempt_started")] == [
            "fal", "scenario"
        ]  # fmt: skip
    assert sim_stats(stack, "fal")["submits_refused"] == 3  # one fal submit per job


async def test_with_fal_unavailable_each_job_moves_on_after_its_retries(
    database_url: str,
) -> None:
    async with running_stack(database_url, timings=FAST_FAL_RETRIES) as stack:
        await configure(stack, "fal", submit_mode="unavailable")
        body, tag = tagged()
        created = await stack.create("auto", ROUTED, body)
        done = await stack.wait_for(created["id"])
        assert done["status"] == "succeeded", done
        assert attempts_of(done) == [
            ("fal", "failed", "provider_unavailable"), ("scenario", "succeeded", None)
        ]  # fmt: skip
        events = await stack.events(created["id"])
        assert len(of_type(events, "submission_retry_scheduled")) == 2
        assert sim_stats(stack, "fal")["submits_unavailable"] == 3  # its allowed attempts
        assert submissions(stack, "scenario", tag) == 1


async def test_a_job_fal_fails_for_another_reason_than_its_content_moves_to_scenario(
    stack: Stack,
) -> None:
    await configure(stack, "fal", fail_rate=1.0, fail_reason="error")
    body, tag = tagged()
    created = await stack.create("auto", ROUTED, body)
    done = await stack.wait_for(created["id"])
    assert done["status"] == "succeeded", done
    assert attempts_of(done) == [
        ("fal", "failed", "provider_failed"), ("scenario", "succeeded", None)
    ]  # fmt: skip
    assert (submissions(stack, "fal", tag), submissions(stack, "scenario", tag)) == (1, 1)
    [failed] = of_type(await stack.events(created["id"]), "attempt_failed")
    assert failed["source"] == "webhook"


async def test_a_content_refusal_fails_the_job_and_no_other_provider_is_tried(
    stack: Stack,
) -> None:
    body, tag = tagged("[content] a lighthouse")
    created = await stack.create("auto", ROUTED, body)
    done = await stack.wait_for(created["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "content_refused"
    assert attempts_of(done) == [("fal", "failed", "content_refused")]
    assert (submissions(stack, "fal", tag), submissions(stack, "scenario", tag)) == (1, 0)
    assert of_type(await stack.events(created["id"]), "attempt_failed") == []


async def test_a_silent_provider_is_cancelled_before_the_next_attempt_starts(
    database_url: str,
) -> None:
    settings = {"fal_job_timeout_s": 1.0}
    async with running_stack(
        database_url, settings=settings, runner_options={"deadline_check_s": 0.2}
    ) as stack:
        await configure(stack, "fal", silent=True, run_seconds=60)  # still running at the deadline
        body, tag = tagged()
        created = await stack.create("auto", ROUTED, body)
        done = await stack.wait_for(created["id"])
        assert done["status"] == "succeeded", done
        assert attempts_of(done) == [
            ("fal", "failed", "provider_timeout"), ("scenario", "succeeded", None)
        ]  # fmt: skip
        events = await stack.events(created["id"])
        types = [e["type"] for e in events]
        # The cancel is sent, and confirmed, before the fal attempt is given up.
        assert types.index("cancel_sent") < types.index("attempt_failed")
        assert events[types.index("cancel_sent")]["data"]["accepted"] is True
        assert [e["data"]["provider"] for e in of_type(events, "attempt_started")] == [
            "fal", "scenario"
        ]  # fmt: skip
        assert (
            types.index("attempt_failed")
            < [i for i, e in enumerate(events) if e["type"] == "attempt_started"][1]
        )
        # fal speaks again: its late news of the superseded attempt is recorded, never used.
        await configure(stack, "fal", silent=False)
        late = await stack.wait_for_event(
            created["id"], "observation_ignored", data={"reason": "superseded_attempt"}
        )
        assert late["data"]["attempt"] == 1 and late["source"] == "webhook"
        after = await stack.job(created["id"])
        assert after["status"] == "succeeded" and after["provider"] == "scenario"
        assert after["outputs"] == done["outputs"]
        assert submissions(stack, "scenario", tag) == 1


# --- the circuit breaker and the adaptive concurrency limit ----------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not in /metrics")


async def test_a_provider_that_keeps_failing_is_skipped_while_its_circuit_is_open(
    database_url: str,
) -> None:
    settings = {"circuit_failure_threshold": 2, "circuit_cool_down_s": 600}
    async with running_stack(database_url, settings=settings) as stack:
        await configure(stack, "fal", submit_mode="refuse")
        for _ in range(2):  # two refusals in a row open fal's circuit
            body, _tag = tagged()
            done = await stack.wait_for((await stack.create("auto", ROUTED, body))["id"])
            assert attempts_of(done)[0] == ("fal", "failed", "provider_rejected")
        metrics = (await stack.http.get("/metrics")).text
        assert metric(metrics, "provider_circuit_state", provider="fal") == 2  # open
        assert metric(metrics, "provider_circuit_state", provider="scenario") == 0
        body, tag = tagged()
        created = await stack.create("auto", ROUTED, body)
        assert created["provider"] == "scenario"  # fal passed over: no request sent to it
        done = await stack.wait_for(created["id"])
        assert attempts_of(done) == [("scenario", "succeeded", None)]
        events = await stack.events(created["id"])
        assert "circuit open" in events[0]["data"]["passed_over"]["fal"]
        assert sim_stats(stack, "fal")["submits_refused"] == 2
        assert submissions(stack, "scenario", tag) == 1


async def test_a_provider_answering_429_gets_fewer_requests_then_more_when_it_recovers(
    database_url: str,
) -> None:
    settings = {"provider_concurrency": 8, "provider_concurrency_max": 64}
    async with running_stack(database_url, settings=settings) as stack:
        limit = stack.service.app[RUNNER_KEY]._limits["scenario"]
        await configure(stack, "scenario", max_concurrent_requests=2, slow_seconds=0.05,
                        retry_after_seconds=0)  # fmt: skip
        first = [
            await stack.create("scenario", "model_flux-krea-dev", tagged()[0]) for _ in range(16)
        ]
        for job in first:  # none lost while the provider pushed back
            assert (await stack.wait_for(job["id"], within_s=60))["status"] == "succeeded"
        pushed_back = sim_stats(stack, "scenario")["rate_limited"]
        assert pushed_back > 0
        shrunk = limit.current
        assert shrunk < 8  # halved on the 429s
        metrics = (await stack.http.get("/metrics")).text
        assert metric(metrics, "provider_concurrency_limit", provider="scenario") == shrunk
        await configure(stack, "scenario", max_concurrent_requests=None)  # recovered
        second = [
            await stack.create("scenario", "model_flux-krea-dev", tagged()[0]) for _ in range(40)
        ]
        for job in second:
            assert (await stack.wait_for(job["id"], within_s=60))["status"] == "succeeded"
        assert limit.current > shrunk  # grew again while the provider answered
        assert sim_stats(stack, "scenario")["rate_limited"] == pushed_back


async def test_a_cancel_cancels_the_live_attempt(stack: Stack) -> None:
    await configure(stack, "fal", run_seconds=30)
    body, _tag = tagged()
    created = await stack.create("auto", ROUTED, body)
    await stack.wait_for(created["id"], {"submitted", "queued", "running"})
    response = await stack.http.post(f"/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 202, response.text
    done = await stack.wait_for(created["id"])
    assert done["status"] == "canceled", done
    assert attempts_of(done) == [("fal", "canceled", None)]
    [sent] = of_type(await stack.events(created["id"]), "cancel_sent")
    assert sent["data"]["accepted"] is True
    assert sim_stats(stack, "fal")["cancels"] == 1
