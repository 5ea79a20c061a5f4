"""Scenario (REFERENCE.md section 3): `POST /generate/custom/{modelId}`, `GET /jobs/{jobId}`,
`GET /assets/{id}` for output URLs, `POST /jobs/{jobId}/action` to cancel. Scenario's webhook
signature scheme is undocumented, so its jobs are polled."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from schemas.jobs import JobOutput, JobStatus
from schemas.providers import (
    ScenarioAsset,
    ScenarioAssetEnvelope,
    ScenarioJob,
    ScenarioJobEnvelope,
    ScenarioJobList,
)
from service.providers.base import (
    CancelOutcome,
    InvalidCallback,
    JobRecord,
    ListedJob,
    Observation,
    Submission,
    SubmitPolicy,
    failure,
)
from service.providers.http import cancel_outcome, make_client, request_as, send
from service.providers.listing import LIST_PAGE_SIZE, echo_matches, jobs_in_window, provider_time

STATUS_MAP = {
    "pending": JobStatus.QUEUED,
    "queued": JobStatus.QUEUED,
    "warming-up": JobStatus.QUEUED,
    "in-progress": JobStatus.RUNNING,
    "finalizing": JobStatus.RUNNING,
    "success": JobStatus.SUCCEEDED,
    "failure": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
}


def _dimension(asset: ScenarioAsset, name: str) -> int | None:
    value = (asset.metadata or {}).get(name)
    return value if isinstance(value, int) else None


def _listed(item: ScenarioJob, *, job: JobRecord, request: dict[str, Any]) -> ListedJob:
    """Scenario echoes each job's parameters (`metadata.input`, with its `modelId`), so a listed
    job either is this request or is not."""
    echoed = item.metadata.input
    model = echoed.get("modelId", job.model) if echoed is not None else None
    matches = echo_matches(request, echoed)
    status = STATUS_MAP.get(item.status)
    return ListedJob(
        provider_job_id=item.jobId,
        created_at=provider_time(item.createdAt),
        terminal=status is not None and status.is_terminal,
        matches_request=None if matches is None else matches and model == job.model,
    )


class ScenarioAdapter:
    """Scenario's API, polled."""

    name = "scenario"
    # Scenario's SDK retries every 5xx, but that is a generated client's blanket default, not a
    # statement that generate is idempotent: a 500/502/504 can come after the job was created
    # (and billed). Only 503, a refusal before any processing, is safe to resend at once; after
    # any other 5xx the job list tells whether the job exists.
    submit_policy = SubmitPolicy(retryable_server_errors=frozenset({503}))

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        api_secret: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        basic = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self.client = make_client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Basic {basic}"},
            transport=transport,
        )

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission:
        del callback_url  # Scenario is polled
        answer = await request_as(
            ScenarioJobEnvelope, self.client, "POST", f"generate/custom/{job.model}",
            what="scenario submit", json=request,
        )  # fmt: skip
        return Submission(provider_job_id=answer.job.jobId, provider_status=answer.job.status)

    async def fetch_status(self, job: JobRecord) -> Observation:
        assert job.provider_job_id is not None
        url = f"jobs/{job.provider_job_id}"
        envelope = await request_as(
            ScenarioJobEnvelope, self.client, "GET", url, what="scenario status"
        )
        found = envelope.job
        status = STATUS_MAP.get(found.status)
        data: dict[str, Any] = {"provider_status": found.status}
        if found.progress is not None:
            data["progress"] = found.progress
        if status is JobStatus.SUCCEEDED:
            assets = await asyncio.gather(*(self._asset(a) for a in found.metadata.assetIds))
            outputs = [
                JobOutput(
                    url=a.url,
                    content_type=a.mimeType,
                    width=_dimension(a, "width"),
                    height=_dimension(a, "height"),
                )
                for a in assets
                if a.url
            ]
            return Observation(
                status=status, provider_status=found.status, outputs=outputs, data=data
            )
        if status is JobStatus.FAILED:
            error = failure("Scenario reported the job failed", found.metadata.error)
            return Observation(status=status, provider_status=found.status, error=error, data=data)
        return Observation(status=status, provider_status=found.status, data=data)

    async def _asset(self, asset_id: str) -> ScenarioAsset:
        url = f"assets/{asset_id}"
        envelope = await request_as(
            ScenarioAssetEnvelope, self.client, "GET", url, what="scenario asset"
        )
        return envelope.asset

    async def parse_callback(
        self, job: JobRecord, headers: Mapping[str, str], body: bytes
    ) -> Observation:
        """Scenario's webhook signature scheme is undocumented, so none of its callbacks can be
        authenticated: all are refused (its jobs are polled)."""
        del job, headers, body
        raise InvalidCallback("Scenario jobs are polled: no callback is accepted")

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        assert job.provider_job_id is not None
        response = await send(
            self.client, "POST", f"jobs/{job.provider_job_id}/action", json={"action": "cancel"}
        )
        return cancel_outcome(response, what="scenario cancel")

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> list[ListedJob]:
        """`GET /jobs?pageSize=&paginationToken=`, newest first."""

        async def read_page(token: str | None) -> tuple[list[ListedJob], str | None]:
            params = {"pageSize": str(LIST_PAGE_SIZE), **({"paginationToken": token} if token else {})}  # fmt: skip
            page = await request_as(
                ScenarioJobList, self.client, "GET", "jobs", what="scenario list", params=params
            )
            listed = [_listed(item, job=job, request=request) for item in page.jobs]
            return listed, page.nextPaginationToken

        return await jobs_in_window(read_page, since=since, until=until, what="scenario list")

    async def aclose(self) -> None:
        await self.client.aclose()
