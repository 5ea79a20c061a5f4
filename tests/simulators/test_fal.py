"""fal simulator against the official fal-client, plus signed webhooks verified with the JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import fal_client
import fal_client.client
import httpx
import orjson
import pytest
import pytest_asyncio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from simulators import RunningSimulators
from tests.simulators.helpers import (
    Delivery,
    WebhookReceiver,
    callbacks_settled,
    configure,
    stats,
)

APP = "fal-ai/flux/krea"


@pytest.fixture
def fal_queue(sims: RunningSimulators, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point fal-client at the simulator for one test (monkeypatch restores it afterwards)."""
    url = f"{sims.fal_url}/"
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", url)
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def fal_async(
    sims: RunningSimulators, fal_queue: str
) -> AsyncIterator[fal_client.AsyncClient]:
    """The official async client, pointed at the simulator."""
    del fal_queue
    client = fal_client.AsyncClient(key=sims.fal_key)
    try:
        yield client
    finally:
        # fal-client offers no close(); its lazily built httpx client must still be closed.
        await (await client._client).aclose()


def key_header(sims: RunningSimulators) -> dict[str, str]:
    return {"Authorization": f"Key {sims.fal_key}"}


async def submit_raw(
    http: httpx.AsyncClient,
    sims: RunningSimulators,
    body: dict[str, Any],
    *,
    webhook: str | None = None,
    app: str = APP,
) -> httpx.Response:
    params = {"fal_webhook": webhook} if webhook else None
    return await http.post(
        f"{sims.fal_url}/{app}", json=body, params=params, headers=key_header(sims)
    )


async def fetch_jwks(http: httpx.AsyncClient, sims: RunningSimulators) -> list[Ed25519PublicKey]:
    response = await http.get(sims.fal_jwks_url)
    keys = []
    for jwk in response.json()["keys"]:
        assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
        assert "=" not in jwk["x"]
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


def signature_verifies(delivery: Delivery, keys: list[Ed25519PublicKey]) -> bool:
    """fal's documented check: Ed25519 over request id, user id, timestamp and body hash."""
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(delivery.body).hexdigest(),
        ]
    ).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


async def test_official_async_client_submit_status_result(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    fal_queue: str,
    fal_async: fal_client.AsyncClient,
) -> None:
    client = fal_async
    handle = await client.submit(APP, {"prompt": "a red fox", "seed": 42})
    first = await handle.status()
    statuses = [status async for status in handle.iter_events(with_logs=True, interval=0.02)]
    result = await client.result(APP, handle.request_id)
    final = await client.status(APP, handle.request_id, with_logs=True)

    # Status, result and cancel URLs drop the model's sub-path ("/krea").
    assert handle.status_url == f"{fal_queue}fal-ai/flux/requests/{handle.request_id}/status"
    assert isinstance(first, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    assert isinstance(statuses[-1], fal_client.Completed)
    assert isinstance(final, fal_client.Completed)
    assert final.error is None
    assert final.metrics["inference_time"] == pytest.approx(0.1)
    assert [log["message"] for log in final.logs or []] == ["Generating image", "Image generated"]
    assert result["seed"] == 42
    assert result["prompt"] == "a red fox"
    assert result["has_nsfw_concepts"] == [False]
    (image,) = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 768, "image/jpeg")
    downloaded = await http.get(image["url"])
    assert downloaded.headers["content-type"] == "image/jpeg"
    assert downloaded.content[:2] == b"\xff\xd8"
    with_sub_path = await http.get(
        handle.status_url.replace("/flux/", "/flux/krea/"), headers=key_header(sims)
    )
    assert with_sub_path.status_code == 404


async def test_official_sync_client_subscribe_in_a_thread(
    sims: RunningSimulators, fal_queue: str
) -> None:
    del fal_queue
    client = fal_client.SyncClient(key=sims.fal_key)
    updates: list[Any] = []

    try:
        result = await asyncio.to_thread(
            client.subscribe,
            APP,
            {"prompt": "a blue whale", "num_images": 2, "output_format": "png"},
            with_logs=True,
            on_queue_update=updates.append,
            interval=0.02,
        )
    finally:
        client._client.close()  # no public close() on fal-client's SyncClient

    assert [image["content_type"] for image in result["images"]] == ["image/png"] * 2
    assert isinstance(updates[-1], fal_client.Completed)


async def test_webhook_signature_verifies_with_the_served_jwks(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    submitted = await submit_raw(http, sims, {"prompt": "a heron"}, webhook=f"{receiver.url}/x")
    request_id = submitted.json()["request_id"]

    (delivery,) = await receiver.wait_for(1)

    assert signature_verifies(delivery, await fetch_jwks(http, sims))
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["x-fal-webhook-request-id"] == request_id
    assert headers["x-fal-webhook-user-id"] == sims.fal_user_id
    assert abs(int(headers["x-fal-webhook-timestamp"]) - time.time()) <= 300
    body = delivery.json()
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert body["status"] == "OK"
    assert body["payload"]["prompt"] == "a heron"
    assert len(body["payload"]["images"]) == 1
    settled = await callbacks_settled(http, sims, "fal", request_id)
    assert settled["callback_url"] == f"{receiver.url}/x"
    assert len(receiver.deliveries) == 1


async def test_bad_signature_fault_fails_verification(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "fal", callback_bad_signature=True)

    await submit_raw(http, sims, {"prompt": "forged"}, webhook=f"{receiver.url}/x")
    (delivery,) = await receiver.wait_for(1)

    assert not signature_verifies(delivery, await fetch_jwks(http, sims))


async def test_timestamp_skew_fault_sends_a_stale_timestamp(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "fal", callback_timestamp_skew_seconds=-3600)

    await submit_raw(http, sims, {"prompt": "stale"}, webhook=f"{receiver.url}/x")
    (delivery,) = await receiver.wait_for(1)

    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert time.time() - int(headers["x-fal-webhook-timestamp"]) > 300
    # Still correctly signed: only the freshness check should reject it.
    assert signature_verifies(delivery, await fetch_jwks(http, sims))


async def test_failure_marker_completes_with_error_and_an_error_webhook(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    fal_async: fal_client.AsyncClient,
) -> None:
    submitted = await submit_raw(http, sims, {"prompt": "[fail] x"}, webhook=f"{receiver.url}/x")
    request_id = submitted.json()["request_id"]
    client = fal_async

    (delivery,) = await receiver.wait_for(1)
    status = await client.status(APP, request_id)
    with pytest.raises(fal_client.client.FalClientHTTPError) as failed:
        await client.result(APP, request_id)

    body = delivery.json()
    assert body["status"] == "ERROR"
    assert body["error"] == "Invalid status code: 422"
    assert body["payload"]["detail"][0]["loc"] == ["body", "prompt"]
    assert signature_verifies(delivery, await fetch_jwks(http, sims))
    assert isinstance(status, fal_client.Completed)
    assert status.error == "Invalid status code: 422"
    assert status.error_type is not None
    assert failed.value.status_code == 422


async def test_missing_prompt_fails_like_fals_validation(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    expected = {
        "detail": [
            {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
        ]
    }
    queued = await submit_raw(http, sims, {"seed": 1}, webhook=f"{receiver.url}/x")
    (delivery,) = await receiver.wait_for(1)
    result = await http.get(queued.json()["response_url"], headers=key_header(sims))
    await configure(http, sims, "fal", fal_validate_on_submit=True)
    rejected = await submit_raw(http, sims, {"seed": 1})

    # By default the queue accepts the body and the runner rejects it (REFERENCE.md example).
    assert queued.status_code == 200
    assert delivery.json()["status"] == "ERROR"
    assert delivery.json()["payload"] == expected
    assert (result.status_code, result.json()) == (422, expected)
    assert (rejected.status_code, rejected.json()) == (422, expected)


async def test_cancel_queued_request(
    sims: RunningSimulators,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
    fal_async: fal_client.AsyncClient,
) -> None:
    await configure(http, sims, "fal", queue_seconds=60)
    handle = await fal_async.submit(APP, {"prompt": "never"}, webhook_url=f"{receiver.url}/x")

    cancel = await http.put(handle.cancel_url, headers=key_header(sims))
    status = await handle.status()
    again = await http.put(handle.cancel_url, headers=key_header(sims))
    unknown = await http.put(
        handle.cancel_url.replace(handle.request_id, "missing"), headers=key_header(sims)
    )
    with pytest.raises(fal_client.client.FalClientHTTPError):
        await handle.cancel()
    (delivery,) = await receiver.wait_for(1)

    assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    assert isinstance(status, fal_client.Completed)
    assert status.error_type == "request_cancelled"
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    assert (unknown.status_code, unknown.json()) == (404, {"status": "NOT_FOUND"})
    assert delivery.json()["status"] == "ERROR"


async def test_webhook_is_retried_until_a_2xx(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    receiver.script = [500, 503]

    submitted = await submit_raw(http, sims, {"prompt": "retry"}, webhook=f"{receiver.url}/x")
    deliveries = await receiver.wait_for(3)
    settled = await callbacks_settled(http, sims, "fal", submitted.json()["request_id"])

    keys = await fetch_jwks(http, sims)
    assert all(signature_verifies(delivery, keys) for delivery in deliveries)
    assert settled["callback_attempts"] == 3
    assert settled["callbacks_delivered"] == 1
    counts = await stats(http, sims, "fal")
    assert (counts["callbacks_failed"], counts["callbacks_sent"]) == (2, 1)


async def test_key_rotation_requires_a_jwks_refetch(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    old_keys = await fetch_jwks(http, sims)
    rotated = await http.post(f"{sims.control_url('fal')}/rotate_key")

    await submit_raw(http, sims, {"prompt": "rotated"}, webhook=f"{receiver.url}/x")
    (delivery,) = await receiver.wait_for(1)

    assert rotated.status_code == 200
    assert len(rotated.json()["keys"]) == 1
    assert not signature_verifies(delivery, old_keys)
    assert signature_verifies(delivery, await fetch_jwks(http, sims))
    assert (await stats(http, sims, "fal"))["jwks_requests"] == 2


async def test_early_webhook_arrives_before_the_submit_answer(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    submitted = await submit_raw(http, sims, {"prompt": "[early] x"}, webhook=f"{receiver.url}/x")

    assert len(receiver.deliveries) == 1
    assert submitted.json()["status"] == "IN_QUEUE"
    assert receiver.deliveries[0].json()["request_id"] == submitted.json()["request_id"]


async def test_status_stream_ends_with_completed(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    status_url = (await submit_raw(http, sims, {"prompt": "streamed"})).json()["status_url"]

    events: list[dict[str, Any]] = []
    async with http.stream("GET", f"{status_url}/stream", headers=key_header(sims)) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line.removeprefix("data: ")))

    assert events[-1]["status"] == "COMPLETED"
    assert {event["status"] for event in events} <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}


async def test_wrong_key_is_rejected_and_namespaced_apps_keep_their_prefix(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    wrong = await http.post(
        f"{sims.fal_url}/{APP}", json={"prompt": "x"}, headers={"Authorization": "Key nope"}
    )
    namespaced = await submit_raw(http, sims, {"prompt": "x"}, app="workflows/me/flow/step")

    assert wrong.status_code == 401
    assert "detail" in wrong.json()
    request_id = namespaced.json()["request_id"]
    assert namespaced.json()["status_url"] == (
        f"{sims.fal_url}/workflows/me/flow/requests/{request_id}/status"
    )
