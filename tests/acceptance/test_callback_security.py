"""Callbacks are accepted only when authentic: fal's Ed25519 signature (fresh, under a published
key) and the job's own token in the URL. Anything else is 401 and changes nothing; an authentic
callback whose body is malformed is 400 and changes nothing either."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulators import SimulatorConfig
from tests.acceptance.stack import Stack, running_stack

SLOW = SimulatorConfig(queue_seconds=60, run_seconds=60)


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sim_config=SLOW) as stack:
        yield stack


async def submitted(stack: Stack, provider: str, model: str) -> tuple[dict[str, Any], Any]:
    """A job at the provider (held there by the slow simulator), and the simulator's record."""
    job = await stack.create(provider, model, {"prompt": "a harbour"})
    await stack.wait_for(job["id"], {"submitted"})
    sim_job = next(
        j
        for j in stack.sims.simulator(provider).jobs.values()
        if job["id"] in (j.callback_url or "")
    )
    return job, sim_job


async def test_fal_webhook_signatures(stack: Stack) -> None:
    job, sim_job = await submitted(stack, "fal", "fal-ai/flux/krea")
    before = await stack.events(job["id"])

    async def deliver(
        body: bytes, headers: dict[str, str], url: str | None = None
    ) -> httpx.Response:
        return await stack.http.post(url or sim_job.callback_url, content=body, headers=headers)

    stack.sims.fal.update_config({"callback_bad_signature": True})
    wrong = await deliver(*stack.sims.fal.render_callback(sim_job))
    stack.sims.fal.update_config(
        {"callback_bad_signature": False, "callback_timestamp_skew_seconds": -301}
    )
    stale = await deliver(*stack.sims.fal.render_callback(sim_job))
    stack.sims.fal.update_config({"callback_timestamp_skew_seconds": 0})
    body, headers = stack.sims.fal.render_callback(sim_job)
    unknown_key = Ed25519PrivateKey.generate()
    message = "\n".join([headers["X-Fal-Webhook-Request-Id"], headers["X-Fal-Webhook-User-Id"],
                         headers["X-Fal-Webhook-Timestamp"], hashlib.sha256(body).hexdigest()]).encode()  # fmt: skip
    unknown = await deliver(
        body, {**headers, "X-Fal-Webhook-Signature": unknown_key.sign(message).hex()}
    )
    tampered = await deliver(body.replace(b'"OK"', b'"ERROR"'), headers)
    missing = await deliver(
        body, {k: v for k, v in headers.items() if k != "X-Fal-Webhook-Signature"}
    )
    wrong_token = await deliver(body, headers, url=sim_job.callback_url[:-4] + "AAAA")

    for response in (wrong, stale, unknown, tampered, missing, wrong_token):
        assert response.status_code == 401, response.text
    assert [e["id"] for e in await stack.events(job["id"])] == [e["id"] for e in before]
    assert (await stack.job(job["id"]))["status"] == "submitted"

    ok = await deliver(body, headers)
    assert ok.status_code == 200
    assert (await stack.job(job["id"]))["status"] == "succeeded"
    again = await deliver(body, headers)
    assert again.status_code == 200 and again.json() == {"status": "ignored"}
    events = await stack.events(job["id"])
    assert [e["type"] for e in events[len(before) :]] == ["status_changed", "observation_ignored"]
    assert events[-1]["data"]["reason"] == "duplicate"


async def test_krea_callback_needs_the_jobs_token(stack: Stack) -> None:
    job, sim_job = await submitted(stack, "krea", "bfl/flux-1-dev")
    before = await stack.events(job["id"])
    completed = {"job_id": sim_job.id, "status": "completed", "created_at": "2026-11-21T10:00:00.000Z",
                 "completed_at": "2026-11-21T10:00:05.000Z", "result": {"urls": ["https://cdn.example/a.png"]}}  # fmt: skip
    body = orjson.dumps(completed)
    url = sim_job.callback_url
    prefix, token = url.rsplit("/", 1)
    for bad in (f"{prefix}/{token[:-1]}x", f"{prefix}/", f"{prefix}/{'A' * len(token)}",
                url.replace(job["id"], "job_01JAAAAAAAAAAAAAAAAAAAAAAA")):  # fmt: skip
        response = await stack.http.post(bad, content=body)
        assert response.status_code in (401, 404), bad
        if response.status_code == 401:
            assert response.json()["error"]["code"] == "invalid_callback_token"
    other_job = orjson.dumps({**completed, "job_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"})
    assert (await stack.http.post(url, content=other_job)).status_code == 401
    assert [e["id"] for e in await stack.events(job["id"])] == [e["id"] for e in before]

    response = await stack.http.post(url, content=body)
    assert response.status_code == 200
    done = await stack.job(job["id"])
    assert done["status"] == "succeeded"
    assert done["outputs"][0]["url"] == "https://cdn.example/a.png"
    assert done["outputs"][0]["content_type"] == "image/png"


async def test_callback_bodies_are_validated_and_limited(stack: Stack) -> None:
    _job, sim_job = await submitted(stack, "krea", "bfl/flux-1-dev")
    assert (await stack.http.post(sim_job.callback_url, content=b"not json")).status_code == 400
    assert (
        await stack.http.post(sim_job.callback_url, content=b'{"status": 1}')
    ).status_code == 400
    big = b'{"job_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert (await stack.http.post(sim_job.callback_url, content=big)).status_code == 413


async def test_a_signed_but_malformed_fal_webhook_is_400_and_changes_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, sim_job = await submitted(stack, "fal", "fal-ai/flux/krea")
    before = await stack.events(job["id"])
    bad_images = {"request_id": sim_job.id, "status": "OK",
                  "payload": {"images": [{"content_type": "image/png", "width": "wide"}]}}  # fmt: skip
    monkeypatch.setattr(stack.sims.fal, "webhook_payload", lambda _job, _now: bad_images)
    body, headers = stack.sims.fal.render_callback(sim_job)
    response = await stack.http.post(sim_job.callback_url, content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_callback"
    assert {tuple(d["loc"][-2:]) for d in error["details"]} >= {(0, "url")}
    assert [e["id"] for e in await stack.events(job["id"])] == [e["id"] for e in before]
    assert (await stack.job(job["id"]))["status"] == "submitted"


async def test_providers_without_callbacks_here_have_no_callback_route(stack: Stack) -> None:
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "a harbour"})
    token = "A" * 43
    scenario = await stack.http.post(f"/callbacks/scenario/{job['id']}/{token}", content=b"{}")
    assert scenario.status_code == 401  # Scenario is polled: no callback is ever accepted
    unknown = await stack.http.post(f"/callbacks/nosuch/{job['id']}/{token}", content=b"{}")
    assert unknown.status_code == 404
