"""fal's queue API (REFERENCE.md section 1). Submit to `{queue}/{app_id}?fal_webhook=...`; status,
result and cancel only through the URLs the submit answer returned (the app's sub-path is not
part of them, so they are never rebuilt from the app id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from schemas.jobs import JobError, JobOutput, JobStatus
from schemas.providers import FalCancelAnswer, FalImagesResult, FalStatus, FalSubmitted, FalWebhook
from service.providers.base import (
    CancelOutcome,
    JobRecord,
    Observation,
    ProviderProtocolError,
    Submission,
)
from service.providers.http import check_status, make_client, request_as, send

QUEUE_STATUS_MAP = {"IN_QUEUE": JobStatus.QUEUED, "IN_PROGRESS": JobStatus.RUNNING}
# The official client retries these "ingress" answers: the request never reached the queue.
INGRESS_RETRYABLE = frozenset({502, 503, 504})


def _outputs(payload: Any) -> list[JobOutput]:
    result = FalImagesResult.model_validate(payload if isinstance(payload, dict) else {})
    return _images(result)


def _images(result: FalImagesResult) -> list[JobOutput]:
    return [
        JobOutput(url=i.url, content_type=i.content_type, width=i.width, height=i.height)
        for i in result.images
    ]


def _ended_with_error(
    job: JobRecord, *, provider_status: str, detail: Any, message: str
) -> Observation:
    # fal has no CANCELLED status: a canceled request completes with an error. Once fal accepted
    # our cancel (CANCELLATION_REQUESTED), that error means the cancel took effect. fal may send
    # that webhook before its answer to our PUT is recorded, so while a requested cancel has no
    # recorded answer yet, an error completion is taken as the cancel too; only a cancel that fal
    # refused (ALREADY_COMPLETED, NOT_FOUND) leaves the error a failure.
    if job.provider_state.get("cancel_accepted", job.cancel_requested):
        return Observation(
            status=JobStatus.CANCELED,
            provider_status=provider_status,
            data={"provider_status": provider_status},
        )
    return Observation(
        status=JobStatus.FAILED,
        provider_status=provider_status,
        error=JobError(code="provider_failed", message=message, provider_detail=detail),
        data={"provider_status": provider_status},
    )


def observe_fal_webhook(job: JobRecord, webhook: FalWebhook) -> Observation:
    """A fal webhook body as an observation."""
    if webhook.status == "OK":
        return Observation(
            status=JobStatus.SUCCEEDED,
            provider_status="OK",
            provider_job_id=webhook.request_id,
            outputs=_outputs(webhook.payload),
            data={"provider_status": "OK"},
        )
    detail = {
        "error": webhook.error,
        "payload": webhook.payload,
        "payload_error": webhook.payload_error,
    }
    observation = _ended_with_error(
        job,
        provider_status=webhook.status,
        detail=detail,
        message=webhook.error or "fal reported an error",
    )
    return Observation(
        status=observation.status, provider_status=observation.provider_status, provider_job_id=webhook.request_id,
        error=observation.error, data=observation.data,
    )  # fmt: skip


class FalAdapter:
    """fal's queue API."""

    name = "fal"

    def __init__(
        self, *, queue_url: str, key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.queue_url = queue_url.rstrip("/")
        self.client = make_client(headers={"Authorization": f"Key {key}"}, transport=transport)

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission:
        answer = await request_as(
            FalSubmitted, self.client, "POST", f"{self.queue_url}/{job.model}", what="fal submit",
            json=request, params={"fal_webhook": callback_url},
        )  # fmt: skip
        return Submission(
            provider_job_id=answer.request_id,
            provider_status=answer.status,
            provider_state={
                "status_url": answer.status_url,
                "response_url": answer.response_url,
                "cancel_url": answer.cancel_url,
            },
        )

    def _url(self, job: JobRecord, name: str) -> str:
        url = job.provider_state.get(name)
        if not isinstance(url, str):
            raise ProviderProtocolError(f"fal job {job.id} has no {name} from its submit answer")
        return url

    async def fetch_status(self, job: JobRecord) -> Observation:
        url = self._url(job, "status_url")
        status = await request_as(FalStatus, self.client, "GET", url, what="fal status")
        mapped = QUEUE_STATUS_MAP.get(status.status)
        if mapped is not None:
            return Observation(
                status=mapped,
                provider_status=status.status,
                data={"provider_status": status.status},
            )
        if status.status != "COMPLETED":
            return Observation(
                status=None, provider_status=status.status, data={"provider_status": status.status}
            )
        if status.error is not None:
            detail = {"error": status.error, "error_type": status.error_type}
            return _ended_with_error(
                job, provider_status="COMPLETED", detail=detail, message=str(status.error)
            )
        url = self._url(job, "response_url")
        result = await request_as(FalImagesResult, self.client, "GET", url, what="fal result")
        return Observation(
            status=JobStatus.SUCCEEDED, provider_status="COMPLETED", outputs=_images(result),
            data={"provider_status": "COMPLETED"},
        )  # fmt: skip

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        response = await send(self.client, "PUT", self._url(job, "cancel_url"))
        if response.status_code >= 500 or response.status_code == 429:
            check_status(response, what="fal cancel")
        try:
            answer = FalCancelAnswer.model_validate_json(response.content).status
        except ValueError:
            answer = f"http {response.status_code}"
        return CancelOutcome(accepted=answer == "CANCELLATION_REQUESTED", provider_answer=answer)

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> None:
        """fal's queue API has no list of an account's requests."""
        del job, request, since, until

    def server_error_is_retryable(self, status: int) -> bool:
        return status in INGRESS_RETRYABLE

    async def aclose(self) -> None:
        await self.client.aclose()
