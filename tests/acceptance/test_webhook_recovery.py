"""Client webhook recovery (CONTRACT.md): one delivery retried now with its webhook-id, and every
delivery that ended failed since a time attempted again (Svix's "recover"), each recorded as a
job event, each keeping its original webhook-id and body. Real HTTP, real PostgreSQL; the
receiver is down for a whole (short) retry schedule so that deliveries end failed."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from tests.acceptance import test_client_webhooks as hooks
from tests.acceptance.stack import Stack
from tests.acceptance.test_client_webhooks import QUICK_SCHEDULE, SECRET, deliveries, eventually

# The fixtures of the client webhook tests: their receivers, and a stack with QUICK_SCHEDULE
# (a whole retry schedule passes in a fraction of a second).
receivers = hooks.receivers
stack = hooks.stack


class Switch:
    """A receiver's answer that is 503 while the endpoint is "down", 200 once it is up."""

    def __init__(self) -> None:
        self.up = False

    async def __call__(self, _n: int) -> web.Response:
        return web.json_response({"ok": True}) if self.up else web.Response(status=503)


def ids_of(received: list[tuple[dict[str, str], bytes]]) -> list[str]:
    return [headers["webhook-id"] for headers, _ in received]


async def all_in(stack: Stack, job_id: str, state: str) -> list[dict[str, Any]]:
    """The job's deliveries once every one of them is in `state`."""

    async def check() -> list[dict[str, Any]] | None:
        found = await deliveries(stack, job_id)
        return found if found and all(d["state"] == state for d in found) else None

    result: list[dict[str, Any]] = await eventually(check, within_s=20)
    return result


async def failed_job(stack: Stack, url: str) -> tuple[str, list[dict[str, Any]]]:
    """A job run to its end whose every delivery ended failed (the receiver down throughout)."""
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=url)
    await stack.wait_for(job["id"])
    changes = [e for e in await stack.events(job["id"]) if e["type"] == "status_changed"]
    failed = await all_in(stack, job["id"], "failed")
    assert len(failed) == len(changes)
    assert all(len(d["attempts"]) == len(QUICK_SCHEDULE) + 1 for d in failed)
    return job["id"], failed


async def test_recover_sends_each_failed_delivery_once_more_with_its_webhook_id(
    stack: Stack, receivers: Any
) -> None:
    switch = Switch()
    receiver = await receivers(switch)
    earlier_job, earlier = await failed_job(stack, receiver.url)
    # `since` after the earlier job's deliveries ended: those are not recovered
    last_end = max(datetime.fromisoformat(d["finished_at"]) for d in earlier)
    since = last_end + timedelta(milliseconds=1)
    job_id, failed = await failed_job(stack, receiver.url)
    before = len(receiver.received)
    originals = {headers["webhook-id"]: body for headers, body in receiver.received}

    switch.up = True
    response = await stack.http.post(
        "/v1/webhooks/recover", json={"since": since.isoformat().replace("+00:00", "Z")}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"requeued": len(failed)}

    await receiver.wait_for(before + len(failed))
    delivered = await all_in(stack, job_id, "delivered")
    again = receiver.received[before:]
    assert Counter(ids_of(again)) == Counter(d["webhook_id"] for d in failed)  # once each
    verifier = Webhook(SECRET)
    for headers, body in again:
        assert body == originals[headers["webhook-id"]]  # the original payload
        verifier.verify(body, headers)
    for delivery in delivered:
        codes = [a["status_code"] for a in delivery["attempts"]]
        assert codes == [503] * (len(QUICK_SCHEDULE) + 1) + [200]
    for delivery in failed:
        event = await stack.wait_for_event(
            job_id, "webhook_retry_requested", data={"webhook_id": delivery["webhook_id"]}
        )
        assert event["source"] == "api"
        assert event["data"]["previous_state"] == "failed"
    assert {d["state"] for d in await deliveries(stack, earlier_job)} == {"failed"}
    assert not [e for e in await stack.events(earlier_job) if e["type"].startswith("webhook_")]

    # Nothing failed since then any more: a second recover requeues nothing, sends nothing.
    response = await stack.http.post("/v1/webhooks/recover", json={"since": since.isoformat()})
    assert response.json() == {"requeued": 0}
    # the earlier deliveries are recovered when `since` covers them
    response = await stack.http.post(
        "/v1/webhooks/recover", json={"since": (since - timedelta(hours=1)).isoformat()}
    )
    assert response.json() == {"requeued": len(earlier)}
    await all_in(stack, earlier_job, "delivered")
    assert len(receiver.received) == before + len(failed) + len(earlier)


async def test_retry_of_a_failed_delivery_is_one_attempt_with_its_webhook_id(
    stack: Stack, receivers: Any
) -> None:
    switch = Switch()
    receiver = await receivers(switch)
    job_id, failed = await failed_job(stack, receiver.url)
    target = failed[0]
    before = len(receiver.received)

    # still down: exactly one more attempt, and it ends failed again (no schedule after it)
    response = await stack.http.post(f"/v1/jobs/{job_id}/webhooks/{target['webhook_id']}/retry")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["webhook_id"] == target["webhook_id"]
    assert body["state"] == "pending"
    await receiver.wait_for(before + 1)

    async def failed_again() -> dict[str, Any] | None:
        for d in await deliveries(stack, job_id):
            if (
                d["webhook_id"] == target["webhook_id"]
                and d["state"] == "failed"
                and len(d["attempts"]) == len(target["attempts"]) + 1
            ):
                return d
        return None

    again = await eventually(failed_again)
    assert again["attempts"][-1]["status_code"] == 503
    assert ids_of(receiver.received[before:]) == [target["webhook_id"]]

    # up: the next retry is delivered, same webhook-id, same body as every earlier try
    switch.up = True
    response = await stack.http.post(f"/v1/jobs/{job_id}/webhooks/{target['webhook_id']}/retry")
    assert response.status_code == 202
    await receiver.wait_for(before + 2)
    done = await eventually(
        lambda: _state_of(stack, job_id, target["webhook_id"], "delivered"), within_s=20
    )
    assert [a["status_code"] for a in done["attempts"]][-2:] == [503, 200]
    tries = [b for h, b in receiver.received if h["webhook-id"] == target["webhook_id"]]
    assert len(tries) == len(QUICK_SCHEDULE) + 3
    assert len(set(tries)) == 1
    requested = [e for e in await stack.events(job_id) if e["type"] == "webhook_retry_requested"]
    assert [
        (e["source"], e["data"]["webhook_id"], e["data"]["previous_state"]) for e in requested
    ] == [
        ("api", target["webhook_id"], "failed"),
        ("api", target["webhook_id"], "failed"),
    ]
    # the other deliveries were left alone
    others = [d for d in await deliveries(stack, job_id) if d["webhook_id"] != target["webhook_id"]]
    assert {d["state"] for d in others} == {"failed"}


async def _state_of(
    stack: Stack, job_id: str, webhook_id: str, state: str
) -> dict[str, Any] | None:
    for d in await deliveries(stack, job_id):
        if d["webhook_id"] == webhook_id and d["state"] == state:
            return d
    return None


async def test_retry_of_a_delivered_webhook_sends_it_again(stack: Stack, receivers: Any) -> None:
    receiver = await receivers()
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)
    await stack.wait_for(job["id"])
    delivered = await all_in(stack, job["id"], "delivered")
    target = delivered[-1]
    before = len(receiver.received)
    response = await stack.http.post(f"/v1/jobs/{job['id']}/webhooks/{target['webhook_id']}/retry")
    assert response.status_code == 202
    await receiver.wait_for(before + 1)
    headers, body = receiver.received[before]
    assert headers["webhook-id"] == target["webhook_id"]
    first = next(b for h, b in receiver.received if h["webhook-id"] == target["webhook_id"])
    assert body == first
    done = await eventually(lambda: _state_of(stack, job["id"], target["webhook_id"], "delivered"))
    event = await stack.wait_for_event(
        job["id"], "webhook_retry_requested", data={"webhook_id": target["webhook_id"]}
    )
    assert event["data"]["previous_state"] == "delivered"
    assert done["webhook_id"] == target["webhook_id"]


async def test_retry_while_waiting_for_a_scheduled_retry_makes_it_due_now(
    stack: Stack, receivers: Any
) -> None:
    async def busy(n: int) -> web.Response:
        return (
            web.Response(status=429, headers={"Retry-After": "3600"})
            if n == 0
            else web.json_response({})
        )

    receiver = await receivers(busy)
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)

    async def waiting() -> dict[str, Any] | None:
        for d in await deliveries(stack, job["id"]):
            if d["type"] == "job.accepted" and d["attempts"] and d["state"] == "pending":
                return d
        return None

    accepted = await eventually(waiting)  # next attempt an hour away (Retry-After)
    response = await stack.http.post(
        f"/v1/jobs/{job['id']}/webhooks/{accepted['webhook_id']}/retry"
    )
    assert response.status_code == 202
    assert response.json()["state"] == "pending"
    done = await eventually(
        lambda: _state_of(stack, job["id"], accepted["webhook_id"], "delivered")
    )
    assert [a["status_code"] for a in done["attempts"]] == [429, 200]


async def test_retry_of_an_attempt_under_way_is_409(stack: Stack, receivers: Any) -> None:
    release = asyncio.Event()

    async def stuck(_n: int) -> web.Response:
        await release.wait()
        return web.json_response({})

    receiver = await receivers(stuck)
    try:
        job = await stack.create(
            "krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url
        )
        await receiver.wait_for(1)  # claimed and being sent
        webhook_id = receiver.received[0][0]["webhook-id"]
        response = await stack.http.post(f"/v1/jobs/{job['id']}/webhooks/{webhook_id}/retry")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "webhook_in_flight"
    finally:
        release.set()


async def test_unknown_job_or_webhook_is_404_and_a_bad_recover_body_422(
    stack: Stack, receivers: Any
) -> None:
    receiver = await receivers()
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)
    unknown_job = "job_01JAAAAAAAAAAAAAAAAAAAAAAA"
    for path, code in [
        (f"/v1/jobs/{unknown_job}/webhooks/msg_1/retry", "not_found"),
        (f"/v1/jobs/{job['id']}/webhooks/msg_999999999/retry", "webhook_not_found"),
        (f"/v1/jobs/{job['id']}/webhooks/not-an-id/retry", "webhook_not_found"),
    ]:
        response = await stack.http.post(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == code
    # another job's webhook id is unknown to this job
    other = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "y"}, webhook_url=receiver.url)
    first_of_job = (await deliveries(stack, job["id"]))[0]["webhook_id"]
    response = await stack.http.post(f"/v1/jobs/{other['id']}/webhooks/{first_of_job}/retry")
    assert response.status_code == 404

    for body, loc in [
        ({}, ["body", "since"]),
        ({"since": "yesterday"}, ["body", "since"]),
        ({"since": 1764583200}, ["body", "since"]),  # seconds are not RFC 3339
        ({"since": "2026-12-01T10:00:00"}, ["body", "since"]),  # no offset
        ({"since": "2026-12-01T10:00:00Z", "until": "x"}, ["body", "until"]),
    ]:
        response = await stack.http.post("/v1/webhooks/recover", json=body)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["code"] == "validation_failed"
        assert [d["loc"] for d in error["details"]] == [loc]
    response = await stack.http.post("/v1/webhooks/recover", content=b"[1]")
    assert response.status_code == 400


async def test_openapi_documents_recovery(stack: Stack) -> None:
    document = (await stack.http.get("/openapi.json")).json()
    retry = document["paths"]["/v1/jobs/{job_id}/webhooks/{webhook_id}/retry"]["post"]
    assert retry["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookDelivery"
    }
    recover = document["paths"]["/v1/webhooks/recover"]["post"]
    assert recover["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookRecover"
    }
    assert document["components"]["schemas"]["WebhookRecover"]["required"] == ["since"]
    assert "requeued" in document["components"]["schemas"]["WebhookRecovered"]["properties"]
