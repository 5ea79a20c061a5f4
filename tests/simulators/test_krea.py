"""Krea simulator over real HTTP: jobs, webhooks and their faults, cancel, errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from simulators import RunningSimulators
from tests.simulators.helpers import (
    WebhookReceiver,
    callbacks_settled,
    configure,
    sim_job,
    stats,
    wait_until,
)

MODEL = "bfl/flux-1-dev"


def auth(sims: RunningSimulators) -> dict[str, str]:
    return {"Authorization": f"Bearer {sims.krea_token}"}


async def submit(
    http: httpx.AsyncClient,
    sims: RunningSimulators,
    prompt: str,
    *,
    webhook: str | None = None,
    model: str = MODEL,
    **fields: Any,
) -> httpx.Response:
    headers = auth(sims)
    if webhook is not None:
        headers["X-Webhook-URL"] = webhook
    return await http.post(
        f"{sims.krea_url}/generate/image/{model}",
        json={"prompt": prompt, **fields},
        headers=headers,
    )


async def get_job(http: httpx.AsyncClient, sims: RunningSimulators, job_id: str) -> dict[str, Any]:
    response = await http.get(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))
    assert response.status_code == 200
    job: dict[str, Any] = response.json()
    return job


async def test_success_sends_exactly_one_webhook_with_the_completed_job(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    response = await submit(http, sims, "a chalet", webhook=f"{receiver.url}/tok1")

    assert response.status_code == 200
    pending = response.json()
    assert pending["status"] == "queued"
    assert pending["completed_at"] is None
    assert pending["result"] is None
    job_id = pending["job_id"]

    (delivery,) = await receiver.wait_for(1)
    settled = await callbacks_settled(http, sims, "krea", job_id)
    assert settled["callback_state"] == "delivered"
    assert len(receiver.deliveries) == 1
    assert delivery.path == "/hooks/tok1"
    body = delivery.json()
    assert body["job_id"] == job_id
    assert body["status"] == "completed"
    assert body["completed_at"] is not None
    assert body == await get_job(http, sims, job_id)
    (url,) = body["result"]["urls"]
    image = await http.get(url)
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert settled["callback_url"] == f"{receiver.url}/tok1"
    assert settled["submit_count"] == 1


async def test_duplicates_fault_delivers_n_plus_one_identical_webhooks(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "krea", callback_duplicates=2)

    job_id = (await submit(http, sims, "dupes", webhook=f"{receiver.url}/t")).json()["job_id"]

    await receiver.wait_for(3)
    await callbacks_settled(http, sims, "krea", job_id)
    assert len(receiver.deliveries) == 3
    assert len({d.body for d in receiver.deliveries}) == 1
    assert (await stats(http, sims, "krea"))["callbacks_sent"] == 3


@pytest.mark.parametrize(
    ("prompt", "patch"),
    [("[drop-callback] a lake", {}), ("a lake", {"callback_drop_rate": 1.0})],
    ids=["marker", "rate"],
)
async def test_dropped_webhook_is_never_sent(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    prompt: str,
    patch: dict[str, Any],
) -> None:
    if patch:
        await configure(http, sims, "krea", **patch)

    job_id = (await submit(http, sims, prompt, webhook=f"{receiver.url}/t")).json()["job_id"]

    settled = await callbacks_settled(http, sims, "krea", job_id)
    assert settled["callback_state"] == "dropped"
    assert receiver.deliveries == []
    assert (await get_job(http, sims, job_id))["status"] == "completed"
    assert (await stats(http, sims, "krea"))["callbacks_dropped"] == 1


async def test_early_webhook_arrives_before_the_submit_answer(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    response = await submit(http, sims, "[early] fast", webhook=f"{receiver.url}/t")

    # Nothing awaited in between: the webhook was already in when the answer came back.
    assert len(receiver.deliveries) == 1
    pending = response.json()
    assert pending["status"] == "queued"
    webhook = receiver.deliveries[0].json()
    assert webhook["job_id"] == pending["job_id"]
    assert webhook["status"] == "completed"


async def test_cancel_while_queued_then_refuse_a_second_cancel(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "krea", queue_seconds=60)
    job_id = (await submit(http, sims, "slow", webhook=f"{receiver.url}/t")).json()["job_id"]

    cancelled = await http.delete(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))
    again = await http.delete(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))
    unknown = await http.delete(f"{sims.krea_url}/jobs/nope", headers=auth(sims))

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert "error" in again.json()
    assert unknown.status_code == 404
    (delivery,) = await receiver.wait_for(1)
    assert delivery.json()["status"] == "cancelled"
    assert delivery.json()["result"] is None


async def test_failure_marker_ends_failed_with_an_error(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    job_id = (await submit(http, sims, "[fail] x", webhook=f"{receiver.url}/t")).json()["job_id"]

    (delivery,) = await receiver.wait_for(1)

    body = delivery.json()
    assert body["status"] == "failed"
    assert isinstance(body["result"]["error"], str)
    assert (await get_job(http, sims, job_id))["status"] == "failed"


async def test_job_progresses_lazily_to_completed_without_webhook(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    job_id = (await submit(http, sims, "polled")).json()["job_id"]
    seen: set[str] = set()

    async def completed() -> dict[str, Any] | None:
        job = await get_job(http, sims, job_id)
        seen.add(job["status"])
        return job if job["status"] == "completed" else None

    job = await wait_until(completed)

    assert seen <= {"queued", "processing", "completed"}
    assert job["completed_at"] >= job["created_at"]
    assert (await stats(http, sims, "krea"))["callbacks_pending"] == 0


async def test_verbose_statuses_start_backlogged(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", verbose_statuses=True, queue_seconds=60)

    response = await submit(http, sims, "busy")

    assert response.json()["status"] == "backlogged"


async def test_auth_and_body_validation(sims: RunningSimulators, http: httpx.AsyncClient) -> None:
    url = f"{sims.krea_url}/generate/image/{MODEL}"
    no_auth = await http.post(url, json={"prompt": "x"})
    wrong = await http.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
    unknown_field = await submit(http, sims, "x", bogus=1)
    missing_prompt = await http.post(url, json={"steps": 3}, headers=auth(sims))
    out_of_range = await submit(http, sims, "x", steps=101)
    other_model = await submit(http, sims, "x", model="google/imagen-4", bogus=1)
    unknown_job = await http.get(f"{sims.krea_url}/jobs/nope", headers=auth(sims))

    assert (no_auth.status_code, wrong.status_code) == (401, 401)
    assert "error" in no_auth.json()
    assert unknown_field.status_code == 400
    assert "bogus" in unknown_field.json()["error"]
    assert missing_prompt.status_code == 400
    assert "prompt" in missing_prompt.json()["error"]
    assert out_of_range.status_code == 400
    assert other_model.status_code == 200
    assert unknown_job.status_code == 404


async def test_rate_limit_and_server_error_faults_hit_the_next_submits(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", rate_limit_next=1, retry_after_seconds=7)
    await configure(http, sims, "krea", server_error_next=1, server_error_status=500)

    limited = await submit(http, sims, "a")
    broken = await submit(http, sims, "b")
    fine = await submit(http, sims, "c")

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json() == {"error": "maximum concurrent jobs reached"}
    assert broken.status_code == 500
    assert fine.status_code == 200
    counts = await stats(http, sims, "krea")
    assert (counts["submits"], counts["jobs_created"]) == (3, 1)


async def test_error_after_submit_creates_the_job_but_hides_it(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", error_after_submit_next=1)
    as_status = await submit(http, sims, "hidden one")
    await configure(http, sims, "krea", error_after_submit_next=1, error_after_submit_mode="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        await submit(http, sims, "hidden two")
    retried = await submit(http, sims, "hidden two")

    assert as_status.status_code == 500
    jobs = (await http.get(f"{sims.control_url('krea')}/jobs")).json()["jobs"]
    assert sorted(job["prompt"] for job in jobs) == ["hidden one", "hidden two", "hidden two"]
    second = await sim_job(http, sims, "krea", retried.json()["job_id"])
    assert second["submit_count"] == 2
    assert (await stats(http, sims, "krea"))["duplicate_submits"] == 1


async def test_list_jobs_pages_newest_first_with_a_time_cursor(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", queue_seconds=60)
    ids = [(await submit(http, sims, f"job {n}")).json()["job_id"] for n in range(3)]
    url = f"{sims.krea_url}/jobs"

    first = (await http.get(url, params={"limit": 2}, headers=auth(sims))).json()
    cursor = first["next_cursor"]
    second = (await http.get(url, params={"limit": 2, "cursor": cursor}, headers=auth(sims))).json()
    queued = (await http.get(url, params={"status": "queued"}, headers=auth(sims))).json()
    completed = (await http.get(url, params={"status": "completed"}, headers=auth(sims))).json()

    assert [item["job_id"] for item in first["items"]] == [ids[2], ids[1]]
    assert [item["job_id"] for item in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    assert len(queued["items"]) == 3
    assert completed["items"] == []


async def test_poll_error_fault_fails_one_status_request(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    job_id = (await submit(http, sims, "poll")).json()["job_id"]
    await configure(http, sims, "krea", poll_error_next=1)

    failed = await http.get(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))
    works = await http.get(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))

    assert failed.status_code == 503
    assert works.status_code == 200


async def test_cancel_can_skip_the_webhook(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "krea", queue_seconds=60, callback_on_cancel=False)
    job_id = (await submit(http, sims, "quiet", webhook=f"{receiver.url}/t")).json()["job_id"]

    cancelled = await http.delete(f"{sims.krea_url}/jobs/{job_id}", headers=auth(sims))

    assert cancelled.json()["status"] == "cancelled"
    job = await sim_job(http, sims, "krea", job_id)
    assert job["callback_state"] == "none"
    assert (await stats(http, sims, "krea"))["callbacks_pending"] == 0
    assert receiver.deliveries == []
