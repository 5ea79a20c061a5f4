"""Each adapter's `parse_callback`: what it accepts, and that whatever it refuses is an
InvalidCallback (401) or a MalformedCallback (400), never a foreign error (a 500)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.jobs import JobStatus
from service.providers.base import BadSignature, InvalidCallback, MalformedCallback
from service.providers.krea import KreaAdapter
from service.providers.scenario import ScenarioAdapter
from tests.unit.test_adapters import fal_adapter, fal_signed, record, transport

S = JobStatus
IMAGE = {"url": "https://cdn/x.jpg", "content_type": "image/jpeg", "width": 8, "height": 8}
FAL_OK = {"request_id": "p-1", "gateway_request_id": "p-1", "status": "OK",
          "payload": {"images": [IMAGE], "seed": 1}}  # fmt: skip
FAL_ERROR = {"request_id": "p-1", "status": "ERROR", "error": "Invalid status code: 422",
             "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}}  # fmt: skip
KREA_DONE = {"job_id": "p-1", "status": "completed", "result": {"urls": ["https://cdn/a.png"]}}


def krea() -> KreaAdapter:
    return KreaAdapter(base_url="https://krea.test", token="t", transport=transport({}))


async def test_a_signed_fal_webhook_is_observed() -> None:
    adapter = fal_adapter()
    observation = await adapter.parse_callback(record("fal"), *fal_signed(FAL_OK))
    assert (observation.status, observation.provider_job_id) == (S.SUCCEEDED, "p-1")
    assert observation.outputs is not None
    assert [o.model_dump(exclude_none=True) for o in observation.outputs] == [IMAGE]
    failed = await adapter.parse_callback(record("fal"), *fal_signed(FAL_ERROR))
    assert failed.status is S.FAILED and failed.error is not None
    assert failed.error.provider_detail["error"] == "Invalid status code: 422"


async def test_a_nul_in_a_callback_is_recorded_as_a_replacement_character() -> None:
    """PostgreSQL cannot store U+0000: refusing such a callback would have the provider (and
    the polls) retry it forever, so it is read with U+FFFD in its place."""
    body = {**FAL_ERROR, "error": "bad\x00input", "payload": {"detail": [{"msg\x00": "\x00"}]}}
    observation = await fal_adapter().parse_callback(record("fal"), *fal_signed(body))
    assert observation.status is S.FAILED and observation.error is not None
    assert observation.error.provider_detail["error"] == "bad\ufffdinput"
    assert observation.error.provider_detail["payload"] == {"detail": [{"msg\ufffd": "\ufffd"}]}
    assert b"\\u0000" not in orjson.dumps(observation.error.provider_detail)


@pytest.mark.parametrize(
    ("state", "cancel_requested", "expected"),
    [
        ({"cancel_accepted": True}, True, S.CANCELED),
        ({"cancel_accepted": False}, True, S.FAILED),  # fal refused the cancel: a real failure
        ({}, True, S.CANCELED),  # the cancel's answer is not recorded yet
        ({}, False, S.FAILED),
    ],
)
async def test_a_fal_error_after_a_cancel_is_the_cancel(
    state: dict[str, Any], cancel_requested: bool, expected: S
) -> None:
    job = record("fal", provider_state=state, cancel_requested=cancel_requested)
    observation = await fal_adapter().parse_callback(job, *fal_signed(FAL_ERROR))
    assert observation.status is expected


async def test_fal_webhooks_that_are_not_signed_by_fal_are_refused() -> None:
    adapter = fal_adapter()
    headers, body = fal_signed(FAL_OK, key=Ed25519PrivateKey.generate())
    with pytest.raises(BadSignature, match="does not verify"):
        await adapter.parse_callback(record("fal"), headers, body)
    headers, body = fal_signed(FAL_OK)
    with pytest.raises(BadSignature):
        await adapter.parse_callback(record("fal"), headers, body.replace(b'"OK"', b'"ERROR"'))
    with pytest.raises(BadSignature, match="missing header"):
        await adapter.parse_callback(record("fal"), {}, body)
    # Signed, but the body names another request than the signature.
    with pytest.raises(BadSignature, match="different requests"):
        await adapter.parse_callback(record("fal"), *fal_signed(FAL_OK, request_id="p-2"))


async def test_a_fal_webhook_for_another_request_is_refused() -> None:
    other = {**FAL_OK, "request_id": "p-2"}
    with pytest.raises(InvalidCallback, match="another provider job"):
        await fal_adapter().parse_callback(record("fal"), *fal_signed(other, request_id="p-2"))
    # Before the submit answer is recorded the job has no provider id yet: the token binds it.
    early = record("fal", provider_job_id=None)
    observation = await fal_adapter().parse_callback(early, *fal_signed(other, request_id="p-2"))
    assert observation.provider_job_id == "p-2"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        {"request_id": "p-1", "status": "CANCELLED"},  # neither OK nor ERROR
        {"status": "OK", "payload": {"images": []}},  # no request id
        {**FAL_OK, "payload": {"images": [{"width": "wide"}]}},  # an image without its URL
        {**FAL_OK, "payload": {"images": "none"}},
        {**FAL_OK, "payload": ["not", "an", "object"]},
    ],
)
async def test_signed_but_malformed_fal_webhooks_are_malformed(payload: Any) -> None:
    with pytest.raises(MalformedCallback) as raised:
        await fal_adapter().parse_callback(record("fal"), *fal_signed(payload))
    assert raised.value.code == "invalid_callback"


async def test_a_fal_ok_whose_result_fal_could_not_read_has_no_outputs() -> None:
    body = {**FAL_OK, "payload": None, "payload_error": "not JSON"}
    observation = await fal_adapter().parse_callback(record("fal"), *fal_signed(body))
    assert (observation.status, observation.outputs) == (S.SUCCEEDED, [])


async def test_a_krea_callback_is_observed_with_the_requested_size() -> None:
    job = record("krea", provider_state={"request": {"width": 1024, "height": 768}})
    observation = await krea().parse_callback(job, {}, orjson.dumps(KREA_DONE))
    assert observation.status is S.SUCCEEDED and observation.outputs is not None
    output = observation.outputs[0]
    assert (output.url, output.content_type, output.width, output.height) == (
        "https://cdn/a.png", "image/png", 1024, 768,
    )  # fmt: skip


async def test_a_krea_callback_naming_another_job_is_refused() -> None:
    body = orjson.dumps({**KREA_DONE, "job_id": "p-2"})
    with pytest.raises(InvalidCallback, match="another provider job") as raised:
        await krea().parse_callback(record("krea"), {}, body)
    assert raised.value.code == "invalid_callback"
    early = await krea().parse_callback(record("krea", provider_job_id=None), {}, body)
    assert early.provider_job_id == "p-2"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"status": 1}', b'{"job_id": "p-1", "status": "completed", "result": {"urls": "x"}}'],
)  # fmt: skip
async def test_malformed_krea_callbacks_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedCallback) as raised:
        await krea().parse_callback(record("krea"), {}, body)
    assert raised.value.details  # the fields at fault, without their values


async def test_scenario_accepts_no_callback() -> None:
    adapter = ScenarioAdapter(base_url="https://sc.test/v1", api_key="k", api_secret="s")
    with pytest.raises(InvalidCallback):
        await adapter.parse_callback(record("scenario"), {}, b'{"job": {}}')
    await adapter.aclose()
