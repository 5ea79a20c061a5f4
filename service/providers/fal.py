"""fal's queue API (REFERENCE.md section 1). Submit to `{queue}/{app_id}?fal_webhook=...`; status,
result and cancel only through the URLs the submit answer returned (the app's sub-path is not
part of them, so they are never rebuilt from the app id). Webhooks are signed (Ed25519 under
fal's published keys): checked by the verifier the registry gives the adapter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import httpx

from schemas.jobs import JobOutput, JobStatus
from schemas.providers import (
    FalCancelAnswer,
    FalImagesResult,
    FalState,
    FalStatus,
    FalSubmitted,
    FalWebhook,
    FalWebhookOk,
)
from service.providers.base import (
    BadSignature,
    CancelOutcome,
    JobRecord,
    Observation,
    ProviderProtocolError,
    Submission,
    SubmitPolicy,
    callback_payload,
    check_provider_job,
    failure,
    read_state,
)
from service.providers.fal_signature import FalWebhookVerifier
from service.providers.http import check_status, make_client, request_as, send

QUEUE_STATUS_MAP = {"IN_QUEUE": JobStatus.QUEUED, "IN_PROGRESS": JobStatus.RUNNING}
FalUrl = Literal["status_url", "response_url", "cancel_url"]


def _outputs(result: FalImagesResult | None) -> list[JobOutput]:
    images = result.images if result is not None else []
    return [
        JobOutput(url=i.url, content_type=i.content_type, width=i.width, height=i.height)
        for i in images
    ]


def _ended_with_error(
    job: JobRecord, state: FalState, *, provider_status: str, detail: Any, message: str,
    provider_job_id: str | None = None,
) -> Observation:  # fmt: skip
    # fal has no CANCELLED status: a canceled request completes with an error. Once fal accepted
    # our cancel (CANCELLATION_REQUESTED), that error means the cancel took effect. fal may send
    # that webhook before its answer to our PUT is recorded, so while a requested cancel has no
    # recorded answer yet, an error completion is taken as the cancel too; only a cancel that fal
    # refused (ALREADY_COMPLETED, NOT_FOUND) leaves the error a failure.
    canceled = job.cancel_requested if state.cancel_accepted is None else state.cancel_accepted
    error = failure(message, detail)
    return Observation(
        status=JobStatus.CANCELED if canceled else JobStatus.FAILED,
        provider_status=provider_status,
        provider_job_id=provider_job_id,
        error=None if canceled else error,
        data={"provider_status": provider_status},
    )


class FalAdapter:
    """fal's queue API."""

    name = "fal"
    # The official client resends these "ingress" answers: the request never reached the queue.
    submit_policy = SubmitPolicy(retryable_server_errors=frozenset({502, 503, 504}))

    def __init__(
        self,
        *,
        queue_url: str,
        key: str,
        verifier: FalWebhookVerifier,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.queue_url = queue_url.rstrip("/")
        self.verifier = verifier
        self.client = make_client(headers={"Authorization": f"Key {key}"}, transport=transport)

    def state(self, job: JobRecord) -> FalState:
        return read_state(FalState, job)

    def _url(self, job: JobRecord, name: FalUrl) -> str:
        url: str | None = getattr(self.state(job), name)
        if url is None:
            raise ProviderProtocolError(f"fal job {job.id} has no {name} from its submit answer")
        return url

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission:
        answer = await request_as(
            FalSubmitted, self.client, "POST", f"{self.queue_url}/{job.model}", what="fal submit",
            json=request, params={"fal_webhook": callback_url},
        )  # fmt: skip
        state = FalState(
            status_url=answer.status_url,
            response_url=answer.response_url,
            cancel_url=answer.cancel_url,
        )
        return Submission(
            provider_job_id=answer.request_id, provider_status=answer.status, provider_state=state
        )

    async def fetch_status(self, job: JobRecord) -> Observation:
        url = self._url(job, "status_url")
        status = await request_as(FalStatus, self.client, "GET", url, what="fal status")
        mapped = QUEUE_STATUS_MAP.get(status.status)
        if mapped is not None or status.status != "COMPLETED":
            # A status outside the table is recorded with no place in the contract's vocabulary.
            data = {"provider_status": status.status}
            return Observation(status=mapped, provider_status=status.status, data=data)
        if status.error is not None:
            detail = {"error": status.error, "error_type": status.error_type}
            return _ended_with_error(
                job, self.state(job), provider_status="COMPLETED", detail=detail,
                message=str(status.error),
            )  # fmt: skip
        url = self._url(job, "response_url")
        result = await request_as(FalImagesResult, self.client, "GET", url, what="fal result")
        return Observation(
            status=JobStatus.SUCCEEDED, provider_status="COMPLETED", outputs=_outputs(result),
            data={"provider_status": "COMPLETED"},
        )  # fmt: skip

    async def parse_callback(
        self, job: JobRecord, headers: Mapping[str, str], body: bytes
    ) -> Observation:
        """The signature first (a forged body is refused before it is read), then the body,
        which must name the signed request and this job's."""
        signed_request_id = await self.verifier.verify(headers, body)
        webhook = callback_payload(FalWebhook, body, what="a fal webhook").root
        if webhook.request_id != signed_request_id:
            raise BadSignature("body and signature name different requests")
        check_provider_job(job, webhook.request_id)
        if isinstance(webhook, FalWebhookOk):
            return Observation(
                status=JobStatus.SUCCEEDED, provider_status="OK",
                provider_job_id=webhook.request_id, outputs=_outputs(webhook.payload),
                data={"provider_status": "OK"},
            )  # fmt: skip
        detail = {
            "error": webhook.error,
            "payload": webhook.payload,
            "payload_error": webhook.payload_error,
        }
        return _ended_with_error(
            job, self.state(job), provider_status="ERROR", detail=detail,
            message=webhook.error or "fal reported an error", provider_job_id=webhook.request_id,
        )  # fmt: skip

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        response = await send(self.client, "PUT", self._url(job, "cancel_url"))
        if response.status_code >= 500 or response.status_code == 429:
            check_status(response, what="fal cancel")
        try:
            answer = FalCancelAnswer.model_validate_json(response.content).status
        except ValueError:
            answer = f"http {response.status_code}"
        accepted = answer == "CANCELLATION_REQUESTED"
        return CancelOutcome(
            accepted=accepted, provider_answer=answer, state=FalState(cancel_accepted=accepted)
        )

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> None:
        """fal's queue API has no list of an account's requests."""
        del job, request, since, until

    async def aclose(self) -> None:
        await self.client.aclose()
