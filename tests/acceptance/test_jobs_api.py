"""The jobs API over real HTTP against real PostgreSQL (CONTRACT.md, Jobs API and Errors)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from tests.conftest import Service

JOB = {
    "provider": "fal",
    "model": "fal-ai/flux/krea",
    "input": {"prompt": "a lighthouse at dawn", "num_images": 1},
    "metadata": {"order": "A-17", "nested": {"list": [1, 2.5, None, "x"]}},
}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    return error


async def create(
    http: httpx.AsyncClient, body: dict[str, Any] = JOB, **headers: str
) -> httpx.Response:
    return await http.post("/v1/jobs", json=body, headers=headers)


async def test_create_returns_202_the_job_and_its_location(http: httpx.AsyncClient) -> None:
    response = await create(http)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_")
    assert job["status"] == "accepted"
    assert job["input"] == JOB["input"]  # exactly as sent, no defaults filled in
    assert job["metadata"] == JOB["metadata"]
    assert job["outputs"] == []
    assert job["error"] is None
    assert job["completed_at"] is None
    assert job["created_at"].endswith("Z") and len(job["created_at"]) == len(
        "2026-11-21T10:00:00.000Z"
    )
    fetched = await http.get(response.headers["Location"])
    assert fetched.status_code == 200
    assert fetched.json() == job


async def test_same_idempotency_key_and_body_is_one_job(http: httpx.AsyncClient) -> None:
    first = await create(http, **{"Idempotency-Key": "order-A-17"})
    second = await create(http, **{"Idempotency-Key": "order-A-17"})
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["id"] == first.json()["id"]
    listed = (await http.get("/v1/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == [first.json()["id"]]
    events = (await http.get(f"/v1/jobs/{first.json()['id']}/events")).json()["events"]
    assert len(events) == 1


async def test_same_idempotency_key_with_another_body_is_422(http: httpx.AsyncClient) -> None:
    await create(http, **{"Idempotency-Key": "order-A-18"})
    other = {**JOB, "input": {"prompt": "something else"}}
    response = await create(http, other, **{"Idempotency-Key": "order-A-18"})
    assert_error(response, 422, "idempotency_key_reused")
    assert len((await http.get("/v1/jobs")).json()["jobs"]) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_idempotency_key_is_422(http: httpx.AsyncClient, key: str) -> None:
    response = await http.post(
        "/v1/jobs", json=JOB, headers=[("Idempotency-Key", key.encode("utf-8"))]
    )
    error = assert_error(response, 422, "validation_failed")
    assert error["details"][0]["loc"] == ["header", "Idempotency-Key"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"\xff\xfe", b'[{"provider": "fal"}]', b'"a string"', b"42", b"null"],
)
async def test_a_body_that_is_not_a_json_object_is_400(
    http: httpx.AsyncClient, content: bytes
) -> None:
    response = await http.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


async def test_a_body_over_1_mib_is_413(http: httpx.AsyncClient) -> None:
    big = {**JOB, "input": {"prompt": "x" * (1024 * 1024)}}
    assert_error(await create(http, big), 413, "payload_too_large")


async def test_a_streamed_body_over_1_mib_is_413_without_content_length(
    http: httpx.AsyncClient,
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"provider": "fal", "model": "m", "input": {"prompt": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}}'

    response = await http.post("/v1/jobs", content=chunks())
    assert "Content-Length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({k: v for k, v in JOB.items() if k != "provider"}, ["body", "provider"]),
        ({**JOB, "provider": "midjourney"}, ["body", "provider"]),
        ({k: v for k, v in JOB.items() if k != "model"}, ["body", "model"]),
        ({**JOB, "model": ""}, ["body", "model"]),
        ({k: v for k, v in JOB.items() if k != "input"}, ["body", "input"]),
        ({**JOB, "input": ["prompt"]}, ["body", "input"]),
        ({**JOB, "input": "a prompt"}, ["body", "input"]),
        ({**JOB, "webhook_url": "ftp://client.example/hook"}, ["body", "webhook_url"]),
        ({**JOB, "webhook_url": "not a url"}, ["body", "webhook_url"]),
        ({**JOB, "webhook_url": "https://user:pw@client.example/hook"}, ["body", "webhook_url"]),
        ({**JOB, "metadata": ["a"]}, ["body", "metadata"]),
        ({**JOB, "metadata": {"blob": "x" * (16 * 1024)}}, ["body", "metadata"]),
        ({**JOB, "priority": "high"}, ["body", "priority"]),
    ],
)
async def test_envelope_validation_is_422_with_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    error = assert_error(await create(http, body), 422, "validation_failed")
    assert loc in [d["loc"] for d in error["details"]]
    assert all(isinstance(d["msg"], str) and d["msg"] for d in error["details"])
    assert (await http.get("/v1/jobs")).json()["jobs"] == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**JOB, "input": {"prompt": "a\x00b"}}, ["body", "input", "prompt"]),
        ({**JOB, "metadata": {"k\x00": 1}}, ["body", "metadata", "k\x00"]),
        ({**JOB, "metadata": {"a": [1, {"b": "\x00"}]}}, ["body", "metadata", "a", 1, "b"]),
        ({**JOB, "webhook_url": "https://example.com/\x00"}, ["body", "webhook_url"]),
    ],
)
async def test_a_nul_character_anywhere_is_422_with_its_place(
    http: httpx.AsyncClient, body: dict[str, Any], loc: list[str | int]
) -> None:
    """PostgreSQL cannot store U+0000: refused before anything is recorded, not a 500."""
    error = assert_error(await create(http, body), 422, "validation_failed")
    assert error["details"][0]["loc"] == loc
    assert (await http.get("/v1/jobs")).json()["jobs"] == []


async def test_metadata_of_exactly_16_kib_is_accepted(http: httpx.AsyncClient) -> None:
    overhead = len('{"blob":""}')
    body = {**JOB, "metadata": {"blob": "x" * (16 * 1024 - overhead)}}
    assert (await create(http, body)).status_code == 202


async def test_unknown_job_and_routes_are_404(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/jobs/job_01JAAAAAAAAAAAAAAAAAAAAAAA"), 404, "not_found")
    assert_error(await http.get("/v1/jobs/not-an-id"), 404, "not_found")
    assert_error(await http.get("/v1/jobs/job_01JAAAAAAAAAAAAAAAAAAAAAAA/events"), 404, "not_found")
    assert_error(
        await http.post("/v1/jobs/job_01JAAAAAAAAAAAAAAAAAAAAAAA/cancel"), 404, "not_found"
    )
    assert_error(await http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await http.get("/nothing-here"), 404, "not_found")  # "/" is the operator page


async def test_wrong_method_is_405_json(http: httpx.AsyncClient) -> None:
    assert_error(await http.delete("/v1/jobs"), 405, "method_not_allowed")


async def test_list_is_newest_first_with_a_cursor(http: httpx.AsyncClient) -> None:
    ids = [(await create(http)).json()["id"] for _ in range(5)]
    await create(
        http, {**JOB, "provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": "x"}}
    )
    page1 = (await http.get("/v1/jobs", params={"provider": "fal", "limit": 2})).json()
    page2 = (
        await http.get(
            "/v1/jobs", params={"provider": "fal", "limit": 2, "cursor": page1["next_cursor"]}
        )
    ).json()
    page3 = (
        await http.get(
            "/v1/jobs", params={"provider": "fal", "limit": 2, "cursor": page2["next_cursor"]}
        )
    ).json()
    seen = [j["id"] for page in (page1, page2, page3) for j in page["jobs"]]
    assert seen == list(reversed(ids))
    assert page3["next_cursor"] is None
    accepted = (await http.get("/v1/jobs", params={"status": "accepted"})).json()["jobs"]
    assert len(accepted) == 6
    assert (await http.get("/v1/jobs", params={"status": "running"})).json()["jobs"] == []


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"provider": "openai"}, "provider"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "Zm9v"}, "cursor"),
    ],
)
async def test_bad_list_parameters_are_422(
    http: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    error = assert_error(await http.get("/v1/jobs", params=params), 422, "validation_failed")
    assert error["details"][0]["loc"] == ["query", name]


async def test_events_are_the_audit_trail(http: httpx.AsyncClient) -> None:
    job = (await create(http)).json()
    events = (await http.get(f"/v1/jobs/{job['id']}/events")).json()["events"]
    assert len(events) == 1
    first = events[0]
    assert first["job_id"] == job["id"]
    assert first["seq"] == 1
    assert (first["type"], first["from_status"], first["to_status"], first["source"]) == (
        "status_changed", None, "accepted", "api",
    )  # fmt: skip
    assert isinstance(first["id"], int)


async def test_cancel_records_the_request_and_a_finished_job_is_409(
    http: httpx.AsyncClient,
) -> None:
    job = (await create(http)).json()
    canceled = await http.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 202
    assert canceled.json()["status"] == "canceled"  # never sent to a provider: canceled at once
    assert canceled.json()["cancel_requested"] is True
    assert_error(await http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_finished")
    types = [e["type"] for e in (await http.get(f"/v1/jobs/{job['id']}/events")).json()["events"]]
    assert types == ["status_changed", "cancel_requested", "status_changed"]


async def test_operations_endpoints(http: httpx.AsyncClient, service: Service) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok", "pid": os.getpid()}
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    await create(http)
    metrics = await http.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'jobs_created_total{provider="fal"}' in metrics.text
    spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {
        "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/webhooks", "/v1/events/stream", "/v1/audit/checkpoints",
        "/v1/jobs/{job_id}/audit", "/v1/jobs/{job_id}/outputs/{index}",
        "/v1/jobs/{job_id}/webhooks/{webhook_id}/retry", "/v1/webhooks/recover",
    }  # fmt: skip
    assert "JobCreate" in spec["components"]["schemas"]
    event = spec["components"]["schemas"]["Event"]["properties"]
    assert {"prev_hash", "hash"} <= set(event)
    assert (await http.get("/healthz")).headers["X-Request-Id"]


async def test_model_input_is_validated_before_anything_is_recorded(
    http: httpx.AsyncClient,
) -> None:
    bad = {
        "provider": "scenario",
        "model": "model_bfl-flux-2-klein-4b-base",
        "input": {"prompt": "p", "width": 1000},
    }
    error = assert_error(await create(http, bad), 422, "validation_failed")
    assert error["details"][0]["loc"] == ["body", "input", "width"]
    unknown = {"provider": "krea", "model": "bfl/flux-9", "input": {"prompt": "p"}}
    error = assert_error(await create(http, unknown), 422, "validation_failed")
    assert error["details"][0]["loc"] == ["body", "model"]
    assert "bfl/flux-1-dev" in error["details"][0]["msg"]
    assert (await http.get("/v1/jobs")).json()["jobs"] == []


async def test_a_provider_without_credentials_is_disabled(database_url: str) -> None:
    from service.config import Settings
    from service.db.database import Database
    from tests.conftest import start_service

    settings = Settings.model_validate({"host": "127.0.0.1", "port": 0, "fal_key": "k"})
    svc = await start_service(settings, await Database.open(database_url, min_size=1, max_size=2))
    try:
        async with httpx.AsyncClient(base_url=svc.url) as client:
            body = {"provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": "p"}}
            error = assert_error(await client.post("/v1/jobs", json=body), 422, "provider_disabled")
            assert error["details"][0]["loc"] == ["body", "provider"]
            fal = {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "p"}}
            assert (await client.post("/v1/jobs", json=fal)).status_code == 202
    finally:
        await svc.server.close()
