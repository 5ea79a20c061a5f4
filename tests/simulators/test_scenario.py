"""Scenario simulator against the official scenario-sdk (configured through its env vars)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import scenario_sdk
from scenario_sdk import AsyncScenario, Scenario

from simulators import RunningSimulators
from tests.simulators.helpers import configure, stats, wait_until

MODEL = "model_flux-krea-dev"
TERMINAL = ("success", "failure", "canceled")


@pytest.fixture
def sdk_env(sims: RunningSimulators, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure scenario-sdk the documented way: SCENARIO_BASE_URL and the key pair."""
    monkeypatch.setenv("SCENARIO_BASE_URL", sims.scenario_url)
    monkeypatch.setenv("SCENARIO_SDK_API_KEY", sims.scenario_api_key)
    monkeypatch.setenv("SCENARIO_SDK_API_SECRET", sims.scenario_api_secret)
    monkeypatch.delenv("SCENARIO_SDK_JWT", raising=False)


@pytest_asyncio.fixture(loop_scope="session")
async def client(sdk_env: None) -> AsyncIterator[AsyncScenario]:
    """The official async client, configured from the environment only."""
    del sdk_env
    async with AsyncScenario() as scenario:
        yield scenario


async def wait_terminal(client: AsyncScenario, job_id: str) -> Any:
    async def probe() -> Any:
        job = (await client.jobs.retrieve(job_id)).job
        return job if job.status in TERMINAL else None

    return await wait_until(probe)


async def test_run_model_to_success_then_fetch_the_asset(
    sims: RunningSimulators, http: httpx.AsyncClient, client: AsyncScenario
) -> None:
    submitted = await client.generate.run_model(
        model_id=MODEL, body={"prompt": "a lighthouse", "numOutputs": 2}
    )
    job = await wait_terminal(client, submitted.job.job_id)
    asset = (await client.assets.retrieve(job.metadata.asset_ids[0])).asset
    image = await http.get(asset.url)

    assert submitted.job.status == "queued"
    assert submitted.job.job_id.startswith("job_")
    assert submitted.job.job_type == "inference"
    assert submitted.creative_units_cost == 10
    assert job.status == "success"
    assert job.progress == 1.0
    assert len(job.metadata.asset_ids) == 2
    assert job.metadata.error is None
    assert job.metadata.input["prompt"] == "a lighthouse"
    assert [entry.status for entry in job.status_history] == ["queued", "in-progress", "success"]
    assert job.billing.cu_cost == 10
    assert asset.id == job.metadata.asset_ids[0]
    assert (asset.status, asset.mime_type) == ("success", "image/png")
    assert asset.url.startswith(sims.scenario_url.removesuffix("/v1"))
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


async def test_sync_client_in_a_thread_sees_a_failure(client: AsyncScenario) -> None:
    with Scenario() as sync_client:
        submitted = await asyncio.to_thread(
            sync_client.generate.run_model, model_id=MODEL, body={"prompt": "[fail] a storm"}
        )

    job = await wait_terminal(client, submitted.job.job_id)
    assert job.status == "failure"
    assert job.metadata.error
    assert job.metadata.asset_ids == []
    with pytest.raises(scenario_sdk.NotFoundError):
        await client.assets.retrieve("asset_missing")


async def test_cancel_a_queued_job(
    sims: RunningSimulators, http: httpx.AsyncClient, client: AsyncScenario
) -> None:
    await configure(http, sims, "scenario", queue_seconds=60)
    job_id = (await client.generate.run_model(model_id=MODEL, body={"prompt": "x"})).job.job_id

    cancelled = await client.jobs.trigger_action(job_id, action="cancel")
    retrieved = (await client.jobs.retrieve(job_id)).job
    with pytest.raises(scenario_sdk.BadRequestError):
        await client.jobs.trigger_action(job_id, action="cancel")

    assert cancelled.job.status == "canceled"
    assert retrieved.status == "canceled"
    assert [entry.status for entry in retrieved.status_history] == ["queued", "canceled"]


@pytest.mark.usefixtures("sdk_env")
async def test_wrong_credentials_get_401(sims: RunningSimulators) -> None:
    with pytest.raises(scenario_sdk.AuthenticationError) as rejected:
        async with AsyncScenario(api_secret="wrong", max_retries=0) as client:
            await client.jobs.retrieve("job_x")

    assert rejected.value.status_code == 401


async def test_rate_limit_is_retried_after_retry_after(
    sims: RunningSimulators, http: httpx.AsyncClient, client: AsyncScenario
) -> None:
    await configure(http, sims, "scenario", rate_limit_next=1, retry_after_seconds=0.1)

    submitted = await client.generate.run_model(model_id=MODEL, body={"prompt": "retried"})

    assert submitted.job.status == "queued"
    counts = await stats(http, sims, "scenario")
    assert (counts["rate_limited"], counts["submits"], counts["jobs_created"]) == (1, 2, 1)


@pytest.mark.usefixtures("sdk_env")
async def test_rate_limit_surfaces_with_its_retry_after_when_retries_are_off(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "scenario", rate_limit_next=1, retry_after_seconds=3)
    with pytest.raises(scenario_sdk.RateLimitError) as limited:
        async with AsyncScenario(max_retries=0) as client:
            await client.generate.run_model(model_id=MODEL, body={"prompt": "x"})

    assert limited.value.response.headers["retry-after"] == "3"
    assert isinstance(limited.value.body, dict)
    assert "message" in limited.value.body


@pytest.mark.usefixtures("sdk_env")
async def test_missing_required_parameter_is_a_400() -> None:
    with pytest.raises(scenario_sdk.BadRequestError):
        async with AsyncScenario(max_retries=0) as client:
            await client.generate.run_model(
                model_id="model_flux-kontext-editing", body={"prompt": "no reference images"}
            )


async def test_list_jobs_pages_through_everything(
    sims: RunningSimulators, http: httpx.AsyncClient, client: AsyncScenario
) -> None:
    await configure(http, sims, "scenario", queue_seconds=60)
    ids = [
        (await client.generate.run_model(model_id=MODEL, body={"prompt": f"n{n}"})).job.job_id
        for n in range(3)
    ]

    first = await client.jobs.list(page_size=2)
    listed = [job.job_id async for job in await client.jobs.list(page_size=2)]

    assert [job.job_id for job in first.jobs] == [ids[2], ids[1]]
    assert first.next_pagination_token is not None
    assert listed == ids[::-1]
