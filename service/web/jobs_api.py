"""The jobs API (CONTRACT.md, Jobs API): create, read, list, history, cancel."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from schemas.events import EventList
from schemas.jobs import AUTO, IDEMPOTENCY_KEY_PATTERN, PROVIDERS, Job, JobCreate, JobStatus
from schemas.model_inputs import MODELS, models_of
from schemas.routing import RoutedInput
from schemas.webhooks import WebhookDeliveryList, WebhookRecover, WebhookRecovered
from service import tracing
from service.errors import Conflict, NotFound, ValidationFailed
from service.logs import get_logger
from service.metrics import JOBS_CREATED
from service.routing import NoProvider, Plan, Router
from service.store import JobStore, request_hash
from service.store.outbox import WebhookOutbox
from service.web.bodies import read_json_object, validate_model
from service.web.middleware import json_response

JOB_ID_PATTERN = re.compile(r"^job_[0-9A-HJKMNP-TV-Z]{26}$")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_SEARCH_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _job_body(job: Job) -> dict[str, Any]:
    return job.body()


def query_error(name: str, msg: str) -> ValidationFailed:
    """A 422 naming one query parameter (the jobs and audit APIs)."""
    return ValidationFailed(
        f"invalid query parameter {name!r}", details=[{"loc": ["query", name], "msg": msg}]
    )


def _search_text(q: str | None) -> str | None:
    """`q` of the job list: a job id, or text to find in the jobs' metadata (JobStore.list_jobs).
    Bounded, since each search reads every job's metadata; no control characters (PostgreSQL's
    text cannot hold NUL)."""
    if q is None:
        return None
    if len(q) > MAX_SEARCH_LENGTH:
        raise query_error("q", f"must be at most {MAX_SEARCH_LENGTH} characters")
    if _CONTROL.search(q):
        raise query_error("q", "must not contain control characters")
    return q


def encode_cursor(job_id: str) -> str:
    """The next page's cursor: the last job id of this page (ids sort by creation time)."""
    return job_id


def decode_cursor(cursor: str) -> str:
    if not JOB_ID_PATTERN.match(cursor):
        raise query_error("cursor", "not a cursor returned by this API")
    return cursor


class JobsApi:
    """Handlers of /v1/jobs; each validates its input fully before touching the store."""

    def __init__(
        self,
        store: JobStore,
        *,
        enabled_providers: frozenset[str],
        job_timeout_s: Callable[[str], float],
        webhooks_enabled: bool = False,
        outbox: WebhookOutbox,
        router: Router,
    ) -> None:
        self.router = router
        self.webhooks_enabled = webhooks_enabled
        self.store = store
        self.enabled_providers = enabled_providers
        self.job_timeout_s = job_timeout_s
        self.outbox = outbox
        self._log = get_logger("service.jobs")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/jobs", self.create_job),
            web.get("/v1/jobs", self.list_jobs),
            web.get("/v1/jobs/{job_id}", self.get_job),
            web.get("/v1/jobs/{job_id}/events", self.list_events),
            web.post("/v1/jobs/{job_id}/cancel", self.cancel_job),
            web.get("/v1/jobs/{job_id}/webhooks", self.list_webhooks),
            web.post("/v1/jobs/{job_id}/webhooks/{webhook_id}/retry", self.retry_webhook),
            web.post("/v1/webhooks/recover", self.recover_webhooks),
        ]

    async def create_job(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY_PATTERN.match(key):
            raise ValidationFailed(
                "invalid Idempotency-Key header",
                details=[
                    {
                        "loc": ["header", "Idempotency-Key"],
                        "msg": "must be 1 to 255 printable ASCII characters",
                    }
                ],
            )
        body = await read_json_object(request)
        create = validate_model(JobCreate, body)
        self._check_webhook(create)
        # The request's trace (continuing the client's traceparent): the job's later work joins it.
        trace = tracing.current_traceparent()
        if create.provider == AUTO:
            plan = self._plan_route(create)
            result = await self.store.create_routed_job(
                create, idempotency_key=key, first=plan.first, event_data=plan.event_data,
                traceparent=trace,
            )  # fmt: skip
        else:
            self._check_provider_input(create)
            result = await self.store.create_job(
                create, idempotency_key=key, timeout_s=self.job_timeout_s(create.provider),
                traceparent=trace,
            )  # fmt: skip
        job = result.job
        structlog.contextvars.bind_contextvars(job_id=job.id, provider=job.provider)
        tracing.annotate({"job.id": job.id, "job.provider": job.provider, "job.model": job.model})
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if result.created:
            JOBS_CREATED.labels(provider=job.provider).inc()
            self._log.info("job_created", model=job.model, idempotent=key is not None)
            return json_response(_job_body(job), status=202, headers=headers)
        if request_hash(create) != result.request_hash:
            raise ValidationFailed(
                "this Idempotency-Key was used with a different request",
                code="idempotency_key_reused",
                details=[
                    {"loc": ["header", "Idempotency-Key"], "msg": "already used with another body"}
                ],
            )
        self._log.info("job_create_replayed")
        return json_response(_job_body(job), status=200, headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        job = await self._find(request)
        return json_response(_job_body(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        params = request.query  # a parameter given empty is invalid, as the OpenAPI says
        provider = params.get("provider")
        if provider is not None and provider not in PROVIDERS:
            raise query_error("provider", f"must be one of {', '.join(PROVIDERS)}")
        status = params.get("status")
        if status is not None and status not in JobStatus.__members__.values():
            raise query_error("status", f"must be one of {', '.join(s.value for s in JobStatus)}")
        limit = DEFAULT_PAGE_SIZE
        if "limit" in params:
            if not re.fullmatch(r"[0-9]{1,4}", params["limit"]):
                raise query_error("limit", "must be an integer")
            limit = int(params["limit"])
            if not 1 <= limit <= MAX_PAGE_SIZE:
                raise query_error("limit", f"must be between 1 and {MAX_PAGE_SIZE}")
        before = decode_cursor(params["cursor"]) if "cursor" in params else None
        jobs, last_id = await self.store.list_jobs(
            provider=provider, status=status, limit=limit, before_id=before,
            search=_search_text(params.get("q") or None),
        )  # fmt: skip
        next_cursor = encode_cursor(last_id) if last_id else None
        return json_response({"jobs": [job.body() for job in jobs], "next_cursor": next_cursor})

    async def list_events(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        events = await self.store.list_events(job_id)
        if not events and not await self.store.job_exists(job_id):
            raise NotFound(f"no job {job_id}")
        return json_response(EventList(events=events).model_dump(mode="json"))

    async def list_webhooks(self, request: web.Request) -> web.Response:
        """Every client webhook delivery of the job, with each attempt (status, duration, error)."""
        job_id = self._job_id(request)
        if not await self.store.job_exists(job_id):
            raise NotFound(f"no job {job_id}")
        deliveries = await self.outbox.deliveries_of(job_id)
        return json_response(WebhookDeliveryList(deliveries=deliveries).model_dump(mode="json"))

    async def retry_webhook(self, request: web.Request) -> web.Response:
        """One more attempt now of one delivery, same webhook-id and body: 202 with the delivery
        once the requeue and its event are committed; 409 `webhook_in_flight` while an attempt
        of it is under way; 404 for an unknown job or webhook id."""
        job_id = self._job_id(request)
        webhook_id = request.match_info["webhook_id"]
        result = await self.outbox.retry(job_id, webhook_id, via="http")
        structlog.contextvars.bind_contextvars(job_id=job_id)
        if result.outcome == "not_found":
            if not await self.store.job_exists(job_id):
                raise NotFound(f"no job {job_id}")
            raise NotFound(f"job {job_id} has no webhook {webhook_id}", code="webhook_not_found")
        if result.outcome == "in_flight":
            raise Conflict(
                f"an attempt of webhook {webhook_id} is under way: retry once it is recorded",
                code="webhook_in_flight",
            )
        assert result.delivery is not None
        self._log.info("webhook_retry_requested", webhook_id=webhook_id)
        return json_response(result.delivery.model_dump(mode="json"), status=202)

    async def recover_webhooks(self, request: web.Request) -> web.Response:
        """Every delivery that ended `failed` at or after `since` attempted once more: 202 with
        `{"requeued": N}` once the requeues and their events are committed."""
        recover = validate_model(WebhookRecover, await read_json_object(request))
        requeued = await self.outbox.recover(recover.since, via="http")
        self._log.info(
            "webhooks_recovered", since=recover.since.isoformat(), requeued=len(requeued)
        )
        return json_response(
            WebhookRecovered(requeued=len(requeued)).model_dump(mode="json"), status=202
        )

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        result = await self.store.request_cancel(job_id)
        if result.outcome == "not_found" or result.job is None:
            raise NotFound(f"no job {job_id}")
        structlog.contextvars.bind_contextvars(job_id=job_id, provider=result.job.provider)
        if result.outcome == "finished":
            raise Conflict(
                f"job {job_id} is already {result.job.status.value}", code="job_finished"
            )
        self._log.info("job_cancel_requested", outcome=result.outcome)
        return json_response(_job_body(result.job), status=202)

    def _plan_route(self, create: JobCreate) -> Plan:
        """A routed model's common input validated, and its first attempt chosen (a provider
        that can serve it, is enabled, and whose circuit is not open): all before anything is
        recorded. No provider on the route can take it: 422 `no_provider_available`."""
        if create.model not in self.router.routes:
            known = ", ".join(self.router.models()) or "none is configured (ROUTES)"
            raise ValidationFailed(
                f"unknown routed model {create.model!r}",
                details=[{"loc": ["body", "model"], "msg": f"must be one of: {known}"}],
            )
        common = validate_model(RoutedInput, create.input, prefix=("body", "input"))
        try:
            return self.router.plan(create.model, common)
        except NoProvider as exc:
            raise ValidationFailed(
                str(exc),
                code="no_provider_available",
                details=[
                    {"loc": ["body", "provider"], "msg": f"{provider}: {reason}"}
                    for provider, reason in exc.reasons.items()
                ],
            ) from exc

    def _check_webhook(self, create: JobCreate) -> None:
        if create.webhook_url is not None and not self.webhooks_enabled:
            raise ValidationFailed(
                "client webhooks are disabled: CLIENT_WEBHOOK_SECRET is not configured",
                code="client_webhooks_disabled",
                details=[
                    {"loc": ["body", "webhook_url"], "msg": "webhooks are disabled on this service"}
                ],
            )

    def _check_provider_input(self, create: JobCreate) -> None:
        """Provider enabled, model known, input valid for that model: all before anything is
        recorded or sent."""
        if create.provider not in self.enabled_providers:
            raise ValidationFailed(
                f"provider {create.provider!r} is disabled: it has no credentials configured",
                code="provider_disabled",
                details=[{"loc": ["body", "provider"], "msg": "provider is disabled"}],
            )
        spec = MODELS.get((create.provider, create.model))
        if spec is None:
            known = ", ".join(models_of(create.provider))
            raise ValidationFailed(
                f"unknown model {create.model!r} for {create.provider}",
                details=[{"loc": ["body", "model"], "msg": f"must be one of: {known}"}],
            )
        validate_model(spec.input_model, create.input, prefix=("body", "input"))

    def _job_id(self, request: web.Request) -> str:
        job_id = request.match_info["job_id"]
        if not JOB_ID_PATTERN.match(job_id):
            raise NotFound(f"no job {job_id}")
        return job_id

    async def _find(self, request: web.Request) -> Job:
        job_id = self._job_id(request)
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        structlog.contextvars.bind_contextvars(job_id=job_id, provider=job.provider)
        return job
