"""Each adapter's mapping of provider answers and callbacks to the contract, with
httpx.MockTransport; its submit policy; its typed state and the JSON it is stored as; and the
boundary's translation of transport failures (over real sockets where it matters)."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.jobs import JobStatus
from schemas.providers import FalState, KreaSize, KreaState
from service.providers.base import (
    JobRecord,
    OutcomeUnknown,
    ProviderAdapter,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderUnreachable,
    failure,
    state_json,
)
from service.providers.fal import FalAdapter
from service.providers.fal_signature import FalWebhookVerifier, signed_message
from service.providers.http import make_client, parse_retry_after, send
from service.providers.krea import STATUS_MAP as KREA_MAP
from service.providers.krea import KreaAdapter
from service.providers.scenario import STATUS_MAP as SCENARIO_MAP
from service.providers.scenario import ScenarioAdapter

S = JobStatus


def record(provider: str, **overrides: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "job_01JAAAAAAAAAAAAAAAAAAAAAAA", "provider": provider, "model": "m", "status": S.SUBMITTED,
        "provider_job_id": "p-1", "input": {}, "provider_state": {}, "cancel_requested": False,
        "submit_started_at": None, "submitted_at": None, "attempts": 0, "created_at": datetime.now(UTC),
    }  # fmt: skip
    values.update(overrides)
    return JobRecord(**values)


def transport(
    answers: dict[tuple[str, str], httpx.Response], seen: list[httpx.Request] | None = None
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return answers[(request.method, request.url.path)]

    return httpx.MockTransport(handle)


FAL_KEY = Ed25519PrivateKey.generate()


def _jwks(_request: httpx.Request) -> httpx.Response:
    raw = FAL_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return httpx.Response(200, json={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]})


def fal_adapter(answers: dict[tuple[str, str], httpx.Response] | None = None) -> FalAdapter:
    """A fal adapter whose verifier trusts FAL_KEY (its JWKS served by a MockTransport)."""
    jwks = httpx.AsyncClient(transport=httpx.MockTransport(_jwks))
    verifier = FalWebhookVerifier(jwks_url="https://jwks.test/keys", client=jwks)
    return FalAdapter(
        queue_url="https://q.test", key="k", verifier=verifier, transport=transport(answers or {})
    )


def fal_signed(
    payload: Any, *, request_id: str = "p-1", key: Ed25519PrivateKey = FAL_KEY
) -> tuple[dict[str, str], bytes]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    timestamp = str(int(time.time()))
    message = signed_message(request_id=request_id, user_id="u", timestamp=timestamp, body=body)
    headers = {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "u",
               "X-Fal-Webhook-Timestamp": timestamp, "X-Fal-Webhook-Signature": key.sign(message).hex()}  # fmt: skip
    return headers, body


def test_status_vocabularies_match_the_contract_table() -> None:
    assert KREA_MAP == {
        "backlogged": S.QUEUED, "queued": S.QUEUED, "scheduled": S.QUEUED, "processing": S.RUNNING,
        "sampling": S.RUNNING, "intermediate-complete": S.RUNNING, "completed": S.SUCCEEDED,
        "failed": S.FAILED, "cancelled": S.CANCELED,
    }  # fmt: skip
    assert SCENARIO_MAP == {
        "pending": S.QUEUED, "queued": S.QUEUED, "warming-up": S.QUEUED, "in-progress": S.RUNNING,
        "finalizing": S.RUNNING, "success": S.SUCCEEDED, "failure": S.FAILED, "canceled": S.CANCELED,
    }  # fmt: skip


async def test_krea_submit_sends_the_webhook_header_and_maps_the_answer() -> None:
    seen: list[httpx.Request] = []
    answer = {
        "job_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
        "status": "backlogged",
        "created_at": "x",
        "completed_at": None,
        "result": None,
    }
    adapter = KreaAdapter(base_url="https://api.krea.test", token="tok", transport=transport(
        {("POST", "/generate/image/bfl/flux-1-dev"): httpx.Response(200, json=answer)}, seen))  # fmt: skip
    job = record("krea", model="bfl/flux-1-dev", status=S.ACCEPTED, provider_job_id=None)
    submission = await adapter.submit(
        job, request={"prompt": "x", "width": 1024, "height": 768}, callback_url="https://svc/cb/t"
    )
    assert submission.provider_job_id == answer["job_id"]
    assert seen[0].headers["X-Webhook-URL"] == "https://svc/cb/t"
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert submission.provider_state == KreaState(request=KreaSize(width=1024, height=768))
    # The JSON stored in jobs.provider_state keeps the shape earlier versions wrote.
    assert state_json(submission.provider_state) == {"request": {"width": 1024, "height": 768}}


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, {"error": "maximum concurrent jobs reached"}, ProviderRateLimited),
        (400, {"error": "invalid body"}, ProviderRejected),
        (402, {"error": "out of credits"}, ProviderRejected),
        (500, {"error": "boom"}, ProviderServerError),
        (200, {"unexpected": True}, ProviderProtocolError),
    ],
)
async def test_krea_submit_errors_are_translated(
    status: int, body: dict[str, Any], error: type[Exception]
) -> None:
    headers = {"Retry-After": "7"} if status == 429 else {}
    adapter = KreaAdapter(base_url="https://api.krea.test", token="t", transport=transport(
        {("POST", "/generate/image/bfl/flux-1-dev"): httpx.Response(status, json=body, headers=headers)}))  # fmt: skip
    with pytest.raises(error) as raised:
        await adapter.submit(
            record("krea", model="bfl/flux-1-dev"), request={"prompt": "x"}, callback_url="u"
        )
    if status == 429:
        assert raised.value.retry_after == 7  # type: ignore[attr-defined]
    if error is ProviderRejected:
        assert raised.value.detail == body  # type: ignore[attr-defined]


async def test_fal_uses_the_urls_from_submit_and_maps_completed_with_error() -> None:
    state = {"status_url": "https://q.test/fal-ai/flux/requests/r1/status",
             "response_url": "https://q.test/fal-ai/flux/requests/r1", "cancel_url": "https://q.test/fal-ai/flux/requests/r1/cancel"}  # fmt: skip
    failed = {
        "status": "COMPLETED",
        "error": "Invalid status code: 422",
        "error_type": "validation",
    }
    adapter = fal_adapter({("GET", "/fal-ai/flux/requests/r1/status"): httpx.Response(200, json=failed)})  # fmt: skip
    observation = await adapter.fetch_status(record("fal", provider_state=state))
    assert observation.status is S.FAILED
    assert observation.error is not None
    assert observation.error.provider_detail == {
        "error": "Invalid status code: 422",
        "error_type": "validation",
    }
    canceled = await adapter.fetch_status(
        record("fal", provider_state={**state, "cancel_accepted": True})
    )
    assert canceled.status is S.CANCELED


async def test_fal_completed_fetches_the_result() -> None:
    state = {
        "status_url": "https://q.test/a/b/requests/r1/status",
        "response_url": "https://q.test/a/b/requests/r1",
        "cancel_url": "x",
    }
    image = {"url": "https://cdn/x.jpg", "content_type": "image/jpeg", "width": 1024, "height": 768}
    adapter = fal_adapter({
        ("GET", "/a/b/requests/r1/status"): httpx.Response(200, json={"status": "COMPLETED", "logs": []}),
        ("GET", "/a/b/requests/r1"): httpx.Response(200, json={"images": [image], "seed": 1}),
    })  # fmt: skip
    observation = await adapter.fetch_status(record("fal", provider_state=state))
    assert observation.status is S.SUCCEEDED
    assert observation.outputs is not None and [
        o.model_dump(exclude_none=True) for o in observation.outputs
    ] == [image]
    for queued, expected in (("IN_QUEUE", S.QUEUED), ("IN_PROGRESS", S.RUNNING)):
        adapter = fal_adapter({("GET", "/a/b/requests/r1/status"): httpx.Response(202, json={"status": queued})})  # fmt: skip
        assert (await adapter.fetch_status(record("fal", provider_state=state))).status is expected


async def test_scenario_success_reads_the_assets() -> None:
    job = {
        "job": {
            "jobId": "job_x",
            "status": "success",
            "progress": 1.0,
            "metadata": {"assetIds": ["asset_1"]},
        }
    }
    asset = {
        "asset": {
            "id": "asset_1",
            "url": "https://cdn/s.png",
            "mimeType": "image/png",
            "status": "success",
        }
    }
    adapter = ScenarioAdapter(base_url="https://api.test/v1", api_key="k", api_secret="s", transport=transport({
        ("GET", "/v1/jobs/job_x"): httpx.Response(200, json=job),
        ("GET", "/v1/assets/asset_1"): httpx.Response(200, json=asset),
    }))  # fmt: skip
    observation = await adapter.fetch_status(record("scenario", provider_job_id="job_x"))
    assert observation.status is S.SUCCEEDED
    assert observation.outputs is not None
    assert (observation.outputs[0].url, observation.outputs[0].content_type) == (
        "https://cdn/s.png",
        "image/png",
    )


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("999999") == 3600
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_a_refused_connection_is_certainly_not_sent() -> None:
    async with make_client() as client:
        with pytest.raises(ProviderUnreachable):
            await send(client, "POST", "http://127.0.0.1:9/generate", json={})


async def test_a_connection_dropped_after_sending_is_an_unknown_outcome() -> None:
    """The aiohttp transport reports this as httpx.ConnectTimeout; it must not read as 'not sent'."""
    received = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, make_client() as client:
        with pytest.raises(OutcomeUnknown):
            await send(client, "POST", f"http://127.0.0.1:{port}/generate", json={"prompt": "x"})
    assert received.is_set()


def _adapters() -> dict[str, ProviderAdapter]:
    return {
        "krea": KreaAdapter(base_url="https://krea.test", token="t", transport=transport({})),
        "fal": fal_adapter(),
        "scenario": ScenarioAdapter(base_url="https://sc.test", api_key="k", api_secret="s",
                                    transport=transport({})),
    }  # fmt: skip


def _server_error(status: int) -> ProviderError:
    return ProviderServerError(f"provider error {status}", status=status)


# provider -> the submit errors and what its policy makes of them
SUBMIT_POLICY = {
    "krea": [(_server_error(500), "unknown"), (_server_error(502), "unknown"),
             (_server_error(503), "unknown"), (_server_error(504), "unknown")],
    "fal": [(_server_error(500), "unknown"), (_server_error(502), "retry"),
            (_server_error(503), "retry"), (_server_error(504), "retry")],
    "scenario": [(_server_error(500), "unknown"), (_server_error(502), "unknown"),
                 (_server_error(503), "retry"), (_server_error(504), "unknown")],
}  # fmt: skip
EVERY_PROVIDER = [
    (ProviderRateLimited("429", retry_after=3), "retry"),
    (ProviderUnreachable("could not connect"), "retry"),
    (ProviderRejected("refused", status=422), "final"),
    (OutcomeUnknown("no answer"), "unknown"),
    (ProviderProtocolError("unexpected answer shape"), "unknown"),
    (ProviderServerError("no status"), "unknown"),
]


@pytest.mark.parametrize("provider", list(SUBMIT_POLICY))
def test_each_provider_has_one_submit_policy(provider: str) -> None:
    policy = _adapters()[provider].submit_policy
    for exc, verdict in [*SUBMIT_POLICY[provider], *EVERY_PROVIDER]:
        assert policy.classify(exc) == verdict, (provider, exc)


def test_stored_state_reads_rows_written_by_earlier_versions() -> None:
    # The runner used to write cancel_accepted for every provider: ignored where unread.
    krea_row = {"request": {"width": 512, "height": None}, "cancel_accepted": True}
    krea = _adapters()["krea"]
    assert isinstance(krea, KreaAdapter)
    assert krea.state(record("krea", provider_state=krea_row)).request == KreaSize(width=512)
    assert krea.state(record("krea")) == KreaState()  # a job bound from Krea's list has none
    fal = _adapters()["fal"]
    assert isinstance(fal, FalAdapter)
    fal_row = {"status_url": "s", "response_url": "r", "cancel_url": "c", "cancel_accepted": False}
    assert fal.state(record("fal", provider_state=fal_row)) == FalState.model_validate(fal_row)
    assert state_json(FalState.model_validate(fal_row)) == fal_row


async def test_invalid_stored_state_is_a_protocol_error() -> None:
    fal = fal_adapter()
    with pytest.raises(ProviderProtocolError, match="stored provider state"):
        await fal.fetch_status(record("fal", provider_state={"status_url": 5}))
    with pytest.raises(ProviderProtocolError, match="no status_url"):
        await fal.fetch_status(record("fal"))
    krea = _adapters()["krea"]
    with pytest.raises(ProviderProtocolError, match="stored provider state"):
        await krea.parse_callback(
            record("krea", provider_state={"request": "big"}), {},
            b'{"job_id": "p-1", "status": "completed"}',
        )  # fmt: skip


async def test_the_cancel_answer_carries_the_state_to_record() -> None:
    state = {"cancel_url": "https://q.test/r1/cancel"}
    answers = {("PUT", "/r1/cancel"): httpx.Response(202, json={"status": "CANCELLATION_REQUESTED"})}  # fmt: skip
    outcome = await fal_adapter(answers).cancel(record("fal", provider_state=state))
    assert outcome.accepted
    assert state_json(outcome.state) == {"cancel_accepted": True}  # merged into the stored state
    too_late = {("DELETE", "/jobs/p-1"): httpx.Response(400, json={"error": "job is completed"})}
    krea = KreaAdapter(base_url="https://krea.test", token="t", transport=transport(too_late))
    outcome = await krea.cancel(record("krea"))
    assert not outcome.accepted and outcome.provider_answer.startswith("refused 400")
    assert state_json(outcome.state) == {}  # Krea keeps nothing of its cancels


@pytest.mark.parametrize(
    ("detail", "code"),
    [
        ({"detail": [{"type": "content_policy_violation", "msg": "flagged"}]}, "content_refused"),
        ("content policy violation: flagged as NSFW by the safety filter", "content_refused"),
        ("Content policy violation: the request was flagged", "content_refused"),
        ("simulated generation failure", "provider_failed"),
        ({"detail": [{"type": "value_error", "msg": "bad"}]}, "provider_failed"),
        (None, "provider_failed"),
    ],
)
def test_a_content_refusal_is_told_from_other_failures(detail: object, code: str) -> None:
    assert failure("the provider reported the job failed", detail).code == code
