"""Krea (REFERENCE.md section 2): `POST /generate/image/{model}` with `X-Webhook-URL`,
`GET /jobs/{id}`, `DELETE /jobs/{id}`. Callbacks are unsigned and come on terminal states only;
the callback URL carries the job's token."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from schemas.jobs import JobOutput, JobStatus
from schemas.providers import KreaJob, KreaJobList, KreaSize, KreaState
from service.providers.base import (
    CancelOutcome,
    JobRecord,
    ListedJob,
    Observation,
    Submission,
    SubmitPolicy,
    callback_payload,
    check_provider_job,
    failure,
    read_state,
)
from service.providers.http import cancel_outcome, make_client, request_as, send
from service.providers.listing import LIST_PAGE_SIZE, jobs_in_window, provider_time
from service.providers.outputs import content_type_from_url

STATUS_MAP = {
    "backlogged": JobStatus.QUEUED,
    "queued": JobStatus.QUEUED,
    "scheduled": JobStatus.QUEUED,
    "processing": JobStatus.RUNNING,
    "sampling": JobStatus.RUNNING,
    "intermediate-complete": JobStatus.RUNNING,
    "completed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELED,
}


def _observe(job: KreaJob, size: KreaSize) -> Observation:
    """A Krea job object (poll answer or webhook body) as an observation."""
    status = STATUS_MAP.get(job.status)
    outputs = None
    error = None
    if status is JobStatus.SUCCEEDED and job.result is not None:
        # Krea gives bare URLs; the size is the one requested (sent with its defaults).
        outputs = [
            JobOutput(
                url=url, content_type=content_type_from_url(url), width=size.width,
                height=size.height,
            )
            for url in job.result.urls
        ]  # fmt: skip
    if status is JobStatus.FAILED:
        detail = job.result.error if job.result is not None else None
        error = failure("Krea reported the job failed", detail)
    return Observation(
        status=status,
        provider_status=job.status,
        provider_job_id=job.job_id,
        outputs=outputs,
        error=error,
        data={"provider_status": job.status},
    )


def _listed(item: KreaJob) -> ListedJob:
    status = STATUS_MAP.get(item.status)
    return ListedJob(
        provider_job_id=item.job_id,
        created_at=provider_time(item.created_at),
        terminal=status is not None and status.is_terminal,
        completed_at=provider_time(item.completed_at),
    )


class KreaAdapter:
    """Krea's API."""

    name = "krea"
    # Krea documents no 5xx semantics: the job may exist. Not resent blindly: the job list
    # tells whether it does, and the callback that carries this job's token binds it.
    submit_policy = SubmitPolicy()

    def __init__(
        self, *, base_url: str, token: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.client = make_client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, transport=transport
        )

    def state(self, job: JobRecord) -> KreaState:
        return read_state(KreaState, job)

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission:
        state = KreaState(
            request=KreaSize(width=request.get("width"), height=request.get("height"))
        )
        answer = await request_as(
            KreaJob, self.client, "POST", f"/generate/image/{job.model}", what="krea submit",
            json=request, headers={"X-Webhook-URL": callback_url},
        )  # fmt: skip
        return Submission(
            provider_job_id=answer.job_id, provider_status=answer.status, provider_state=state
        )

    async def fetch_status(self, job: JobRecord) -> Observation:
        assert job.provider_job_id is not None
        url = f"/jobs/{job.provider_job_id}"
        found = await request_as(KreaJob, self.client, "GET", url, what="krea status")
        return _observe(found, self.state(job).request)

    async def parse_callback(
        self, job: JobRecord, headers: Mapping[str, str], body: bytes
    ) -> Observation:
        """Krea's callbacks are unsigned: the token in the URL (checked before) is the proof, and
        the body must name this job's Krea job once that is known."""
        del headers
        found = callback_payload(KreaJob, body, what="a Krea job object")
        check_provider_job(job, found.job_id)
        return _observe(found, self.state(job).request)

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        # Krea cancels only while queued or processing; a refusal means it is too late and the
        # job's own terminal state will arrive by webhook or poll.
        assert job.provider_job_id is not None
        response = await send(self.client, "DELETE", f"/jobs/{job.provider_job_id}")
        return cancel_outcome(response, what="krea cancel")

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> list[ListedJob]:
        """`GET /jobs?cursor=&limit=`, newest first. Krea's job objects show no input, so a
        listed job can be told apart only by its id (one of ours?) and its creation time."""
        del job, request

        async def read_page(cursor: str | None) -> tuple[list[ListedJob], str | None]:
            params = {"limit": str(LIST_PAGE_SIZE), **({"cursor": cursor} if cursor else {})}
            page = await request_as(
                KreaJobList, self.client, "GET", "/jobs", what="krea list", params=params
            )
            return [_listed(item) for item in page.items], page.next_cursor

        return await jobs_in_window(read_page, since=since, until=until, what="krea list")

    async def aclose(self) -> None:
        await self.client.aclose()
