"""Archived outputs (CONTRACT.md, Archived outputs) through the whole stack: every provider's
outputs downloaded from the simulators into a folder and into S3 (moto), recorded once each,
served byte-identical after the provider's copy is gone; failures retried then recorded; the
size limit, the private-address guard, expired URLs; job.outputs_archived sent once."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from tests.acceptance.archive_stores import MotoS3, OutputStore, folder_store, moto_s3
from tests.acceptance.stack import Stack, running_stack
from tests.acceptance.test_client_webhooks import (  # noqa: F401 - receivers is a fixture
    SECRET,
    Receiver,
    deliveries,
    receivers,
)

pytestmark = pytest.mark.timeout(120)

MODELS = {
    "krea": ("bfl/flux-1-dev", {"prompt": "a lighthouse", "width": 768, "height": 512}),
    "fal": ("fal-ai/flux/krea", {"prompt": "a lighthouse", "num_images": 2}),
    "scenario": ("model_flux-krea-dev", {"prompt": "a lighthouse"}),
}
# Quick retries, so that a test sees every attempt within a second.
FAST_RETRIES = {"output_fetch_backoff_s": 0.02, "output_fetch_attempts": 3}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    yield from moto_s3()


@pytest.fixture(params=["file", "s3"])
async def output_store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: MotoS3
) -> OutputStore:
    if request.param == "file":
        return folder_store(tmp_path / "outputs")
    return await s3_server.store()


@asynccontextmanager
async def archiving_stack(
    database_url: str, store: OutputStore, **settings: Any
) -> AsyncIterator[Stack]:
    async with running_stack(
        database_url,
        settings={
            "output_fetch_allow_private": True,  # the simulators listen on 127.0.0.1
            **FAST_RETRIES,
            **store.settings,
            **settings,
        },
    ) as stack:
        yield stack


async def sim_control(stack: Stack, provider: str, path: str, **body: Any) -> dict[str, Any]:
    url = f"{stack.sims.control_url(provider)}/{path}"
    async with httpx.AsyncClient() as client:
        response = await (client.post(url, json=body) if body else client.get(url))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def run_job(stack: Stack, provider: str, **extra: Any) -> dict[str, Any]:
    model, input = MODELS[provider]
    created = await stack.create(provider, model, input, **extra)
    return await stack.outputs_settled(created["id"])


async def received(receiver: Receiver, event_type: str) -> dict[str, Any]:
    """The body of the first webhook of `event_type` the receiver got, once it has come."""

    def find() -> dict[str, Any] | None:
        for _headers, raw in receiver.received:
            body: dict[str, Any] = orjson.loads(raw)
            if body["type"] == event_type:
                return body
        return None

    async with receiver.arrived:
        await asyncio.wait_for(receiver.arrived.wait_for(lambda: find() is not None), 20)
    found = find()
    assert found is not None
    return found


def archive_events(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


@pytest.mark.parametrize("provider", list(MODELS))
async def test_every_output_is_archived_and_served_after_the_provider_lost_it(
    database_url: str, output_store: OutputStore, provider: str
) -> None:
    async with archiving_stack(database_url, output_store) as stack:
        job = await run_job(stack, provider)
        events = await stack.events(job["id"])
        archived = archive_events(events, "output_archived")
        assert sorted(e["data"]["index"] for e in archived) == list(range(len(job["outputs"])))
        assert all(e["source"] == "system" for e in archived)
        for index, output in enumerate(job["outputs"]):
            event = next(e for e in archived if e["data"]["index"] == index)
            assert output["archived_url"] == f"/v1/jobs/{job['id']}/outputs/{index}"
            assert (output["sha256"], output["bytes"]) == (
                event["data"]["sha256"],
                event["data"]["bytes"],
            )
            served = await stack.http.get(output["archived_url"])
            assert served.status_code == 200
            assert hashlib.sha256(served.content).hexdigest() == output["sha256"]
            assert len(served.content) == output["bytes"] == int(served.headers["Content-Length"])
            assert served.headers["ETag"] == f'"{output["sha256"]}"'
            assert served.headers["Content-Type"] == event["data"]["content_type"]
            # The provider's own copy is the one archived.
            async with httpx.AsyncClient() as client:
                assert (await client.get(output["url"])).content == served.content
            # Width and height are the image's own, filled from its header where the provider
            # gave none (Krea's and Scenario's outputs carry no size).
            with Image.open(io.BytesIO(served.content)) as image:
                assert (output["width"], output["height"]) == image.size

        # The provider deletes its outputs (or their signed URLs expire): still served as is.
        await sim_control(stack, provider, "config", files_gone=True)
        first = job["outputs"][0]
        again = await stack.http.get(first["archived_url"])
        assert hashlib.sha256(again.content).hexdigest() == first["sha256"]
        cached = await stack.http.get(
            first["archived_url"], headers={"If-None-Match": f'"{first["sha256"]}"'}
        )
        assert cached.status_code == 304 and cached.content == b""
        metrics = (await stack.http.get("/metrics")).text
        assert 'outputs_archived_total{outcome="archived"}' in metrics
        assert "output_archive_backlog 0.0" in metrics


async def test_scenario_outputs_get_their_size_from_the_image_header(
    database_url: str, tmp_path: Path
) -> None:
    async with archiving_stack(database_url, folder_store(tmp_path)) as stack:
        model = "model_bfl-flux-2-klein-4b-base"
        created = await stack.create(
            "scenario", model, {"prompt": "x", "width": 640, "height": 384}
        )
        job = await stack.outputs_settled(created["id"])
        (event,) = archive_events(await stack.events(job["id"]), "output_archived")
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (640, 384)
        assert (event["data"]["width"], event["data"]["height"]) == (640, 384)
        # Scenario's asset carried no size: it came from the archived bytes.
        asset_id = job["outputs"][0]["url"].split("/")[-1].split("-")[0]
        sims = stack.sims
        async with httpx.AsyncClient(
            auth=(sims.scenario_api_key, sims.scenario_api_secret)
        ) as client:
            asset = (await client.get(f"{stack.sims.scenario_url}/assets/{asset_id}")).json()
        assert "width" not in asset["asset"]["metadata"]


@pytest.mark.parametrize(
    ("fault", "expected_reason"),
    [({"file_error_next": 100}, "HTTP 500"), ({"files_gone": True}, "HTTP 404")],
    ids=["server_error", "gone"],
)
async def test_a_failing_download_is_retried_then_recorded_as_failed(
    database_url: str, tmp_path: Path, fault: dict[str, Any], expected_reason: str
) -> None:
    async with archiving_stack(database_url, folder_store(tmp_path)) as stack:
        await sim_control(stack, "scenario", "config", **fault)
        job = await run_job(stack, "scenario")
        assert job["status"] == "succeeded"
        (failed,) = archive_events(await stack.events(job["id"]), "output_archive_failed")
        assert failed["data"]["code"] == "download_failed"
        assert expected_reason in failed["data"]["reason"]
        assert failed["data"]["attempts"] == FAST_RETRIES["output_fetch_attempts"]
        # Scenario's URLs are signed: no part of the query reaches the event.
        assert "Signature" not in str(failed) and "Expires" not in str(failed)
        stats = await sim_control(stack, "scenario", "stats")
        assert stats["file_requests"] == FAST_RETRIES["output_fetch_attempts"]
        output = job["outputs"][0]
        assert (output["sha256"], output["bytes"], output["archived_url"]) == (None, None, None)
        refused = await stack.http.get(f"/v1/jobs/{job['id']}/outputs/0")
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "output_not_archived"


async def test_a_download_that_fails_once_is_archived_on_the_next_attempt(
    database_url: str, tmp_path: Path
) -> None:
    async with archiving_stack(database_url, folder_store(tmp_path)) as stack:
        await sim_control(stack, "krea", "config", file_error_next=1, file_error_status=503)
        job = await run_job(stack, "krea")
        events = await stack.events(job["id"])
        assert len(archive_events(events, "output_archived")) == 1
        assert archive_events(events, "output_archive_failed") == []
        assert (await sim_control(stack, "krea", "stats"))["file_requests"] == 2


async def test_an_output_over_the_limit_is_refused_and_nothing_is_stored(
    database_url: str, tmp_path: Path
) -> None:
    async with archiving_stack(
        database_url, folder_store(tmp_path / "outputs"), output_max_bytes=100
    ) as stack:
        job = await run_job(stack, "fal")
        failed = archive_events(await stack.events(job["id"]), "output_archive_failed")
        assert [e["data"]["code"] for e in failed] == ["output_too_large"] * 2
        assert all(e["data"]["attempts"] == 1 for e in failed)  # not retried
        assert [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] == []


async def test_private_addresses_are_refused_unless_allowed(
    database_url: str, tmp_path: Path
) -> None:
    async with archiving_stack(
        database_url, folder_store(tmp_path), output_fetch_allow_private=False
    ) as stack:
        job = await run_job(stack, "krea")
        (failed,) = archive_events(await stack.events(job["id"]), "output_archive_failed")
        assert failed["data"]["code"] == "private_address"
        assert failed["data"]["attempts"] == 1
        assert (await sim_control(stack, "krea", "stats"))["file_requests"] == 0


async def test_an_expired_url_is_not_fetched(database_url: str, tmp_path: Path) -> None:
    async with archiving_stack(database_url, folder_store(tmp_path)) as stack:
        await sim_control(stack, "scenario", "config", scenario_asset_url_seconds=0)
        job = await run_job(stack, "scenario")
        (failed,) = archive_events(await stack.events(job["id"]), "output_archive_failed")
        assert failed["data"]["code"] == "url_expired"
        assert "Signature" not in failed["data"]["reason"]
        assert (await sim_control(stack, "scenario", "stats"))["file_requests"] == 0


async def test_outputs_archived_webhook_is_sent_once_all_outputs_are_archived(
    database_url: str,
    tmp_path: Path,
    receivers: Any,  # noqa: F811 - the imported fixture
) -> None:
    receiver = await receivers()
    async with archiving_stack(
        database_url,
        folder_store(tmp_path),
        client_webhook_secret=SECRET,
        client_webhook_retry_schedule=(0.05,),
        client_webhook_allow_private=True,
    ) as stack:
        job = await run_job(stack, "fal", webhook_url=receiver.url)  # two outputs
        body = await received(receiver, "job.outputs_archived")
        sent = [
            d for d in await deliveries(stack, job["id"]) if d["type"] == "job.outputs_archived"
        ]
        assert len(sent) == 1
        last = max(archive_events(await stack.events(job["id"]), "output_archived"),
                   key=lambda e: e["id"])  # fmt: skip
        assert sent[0]["webhook_id"] == f"msg_{last['id']}"
        assert [o["sha256"] for o in body["data"]["outputs"]] == [
            o["sha256"] for o in (await stack.job(job["id"]))["outputs"]
        ]
        assert all(o["archived_url"] for o in body["data"]["outputs"])


async def test_unknown_outputs_and_unarchived_ones_are_404s(database_url: str) -> None:
    async with running_stack(database_url) as stack:  # OUTPUT_STORE_URL=none: nothing archived
        created = await stack.create("krea", *MODELS["krea"])
        job = await stack.wait_for(created["id"])
        not_archived = await stack.http.get(f"/v1/jobs/{job['id']}/outputs/0")
        unknown_index = await stack.http.get(f"/v1/jobs/{job['id']}/outputs/7")
        unknown_job = await stack.http.get("/v1/jobs/job_01ARZ3NDEKTSV4RRFFQ69G5FAV/outputs/0")
        nonsense = await stack.http.get(f"/v1/jobs/{job['id']}/outputs/-1")
        assert [r.status_code for r in (not_archived, unknown_index, unknown_job, nonsense)] == [
            404
        ] * 4
        assert not_archived.json()["error"]["code"] == "output_not_archived"
        assert {r.json()["error"]["code"] for r in (unknown_index, unknown_job, nonsense)} == {
            "output_not_found"
        }
        assert job["outputs"][0]["archived_url"] is None


async def test_archived_outputs_need_the_api_token(database_url: str, tmp_path: Path) -> None:
    async with archiving_stack(
        database_url, folder_store(tmp_path), api_tokens=["a-token"]
    ) as stack:
        stack.http.headers["Authorization"] = "Bearer a-token"
        job = await run_job(stack, "krea")
        path = job["outputs"][0]["archived_url"]
        async with httpx.AsyncClient(base_url=stack.service.url) as anonymous:
            refused = await anonymous.get(path)
            wrong = await anonymous.get(path, headers={"Authorization": "Bearer other"})
        assert (refused.status_code, wrong.status_code) == (401, 401)
        assert (await stack.http.get(path)).status_code == 200
