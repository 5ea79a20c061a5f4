"""Provider callbacks: `POST /callbacks/{provider}/{job_id}/{token}`, one route for every
provider, which reads nothing of a callback itself: its adapter does (`parse_callback`).

Store, then acknowledge: a callback is answered 2xx only after its observation is committed; if
the database is unreachable it gets 503 and the provider retries. A callback is accepted only
with the job's own token (at least 256 random bits, compared by hash in constant time) and what
its adapter demands (fal: a valid Ed25519 signature); a refused one gets 401, a malformed one
400, and neither changes anything. A provider with no adapter on this instance has no route
here (404). Because the token is in the URL the job was submitted with, a callback that arrives
before the submit answer was recorded (the provider was fast) is still matched to its job and
applied.

A routed job (CONTRACT.md, Routing) has a token per attempt. A callback of an attempt that was
superseded (the job moved on to another provider) is authentic news and is recorded, as
`observation_ignored` with reason `superseded_attempt`, but never moves the job: its result is
not the job's. A failure of the current attempt for a reason other than the content moves the
job to its next provider instead of failing it (service.routing).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import structlog
from aiohttp import web

from schemas.jobs import JobStatus
from service import tracing
from service.callback_tokens import hash_callback_token
from service.errors import BadRequest, NotFound, PayloadTooLarge, ServiceError, Unauthorized
from service.logs import get_logger
from service.metrics import CALLBACKS, CALLBACKS_REJECTED
from service.providers.base import (
    InvalidCallback,
    JobRecord,
    MalformedCallback,
    Observation,
    ProviderAdapter,
)
from service.routing import Router, fail_over, fails_over, health_of
from service.store import JobStore
from service.web.bodies import CALLBACK_BODY_LIMIT, read_body
from service.web.middleware import json_response
from service.workers.circuit import Circuits

#: What refuses a callback (answered 401, 400 or 413; counted as rejected, nothing recorded).
_REFUSED = (Unauthorized, BadRequest, PayloadTooLarge)
#: The `reason` of a rejected callback: its error code when it is one of these (a bounded set,
#: whatever an adapter may raise), `malformed` for any 400, `other` otherwise.
REJECTION_REASONS = frozenset(
    {"invalid_callback_token", "invalid_signature", "invalid_callback", "payload_too_large"}
)


def rejection_reason(exc: ServiceError) -> str:
    if isinstance(exc, BadRequest):
        return "malformed"
    return exc.code if exc.code in REJECTION_REASONS else "other"


class CallbacksApi:
    """The receiver of provider callbacks."""

    def __init__(
        self,
        store: JobStore,
        *,
        adapters: Mapping[str, ProviderAdapter],
        router: Router | None = None,
        circuits: Circuits | None = None,
    ) -> None:
        self.store = store
        self.adapters = adapters
        self.router = router
        self.circuits = circuits
        self._log = get_logger("service.callbacks")

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/callbacks/{provider}/{job_id}/{token}", self.receive)]

    async def receive(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC)
        provider = request.match_info["provider"]
        adapter = self.adapters.get(provider)
        if adapter is None:  # before anything is counted: the URL's name is anyone's choice
            raise NotFound(f"no callbacks for provider {provider!r} here")
        job_id = request.match_info["job_id"]
        structlog.contextvars.bind_contextvars(job_id=job_id, provider=provider)
        try:
            body = await read_body(request, limit=CALLBACK_BODY_LIMIT)
            job, superseded = await self._authenticate(
                job_id, provider, request.match_info["token"]
            )
        except _REFUSED as exc:
            self._rejected(provider, exc)
            raise
        if superseded is not None:  # the attempt's own provider job: bound by its token
            job = replace(job, provider=provider, provider_job_id=None)
        # Its job's own token: processed in a span of the job's trace (service.tracing).
        with tracing.job_span("job.callback", job):
            try:
                observation = await self._parse(adapter, job, request, body)
            except _REFUSED as exc:
                self._rejected(provider, exc)
                raise
            received = {
                "received_at": received_at.isoformat(),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
            outcome = await self._record(job, provider, superseded, observation, received)
            status = observation.status.value if observation.status else None
            tracing.annotate({"job.observed_status": status, "callback.outcome": outcome})
        CALLBACKS.labels(provider=provider, outcome=outcome).inc()
        return json_response({"status": outcome})

    def _rejected(self, provider: str, exc: ServiceError) -> None:
        CALLBACKS.labels(provider=provider, outcome="rejected").inc()
        CALLBACKS_REJECTED.labels(provider=provider, reason=rejection_reason(exc)).inc()
        self._log.warning("webhook_rejected", reason=exc.message, code=exc.code)

    async def _record(
        self,
        job: JobRecord,
        provider: str,
        superseded: int | None,
        observation: Observation,
        received: dict[str, str],
    ) -> str:
        """Records an authentic callback's news: `applied`, or `ignored` (no status of the
        contract's, a duplicate or stale one, a superseded attempt's)."""
        if superseded is not None:
            return await self._record_superseded(job.id, superseded, observation, received)
        if observation.status is None:
            return "ignored"
        self._count_health(provider, observation)
        if (
            self.router is not None
            and job.route is not None
            and observation.status is JobStatus.FAILED
            and fails_over(observation.error)
        ):
            return await self._fail_over(job, observation, received)
        result = await self.store.apply_observation(
            job.id,
            replace(observation, data={**observation.data, **received}),
            source="webhook",
            record_ignored=True,
        )
        self._log.info(
            "webhook_recorded", applied=result.applied, provider_status=observation.provider_status
        )
        return "applied" if result.applied else "ignored"

    def _count_health(self, provider: str, observation: Observation) -> None:
        """A job's end, as its provider reports it, counts for or against its circuit."""
        healthy = health_of(observation)
        if self.circuits is not None and healthy is not None:
            self.circuits[provider].record(healthy=healthy)

    async def _record_superseded(
        self, job_id: str, attempt: int, observation: Observation, received: dict[str, str]
    ) -> str:
        status = observation.status.value if observation.status else None
        await self.store.record_event(
            job_id, type="observation_ignored", source="webhook",
            data={**observation.data, **received, "reason": "superseded_attempt",
                  "attempt": attempt, "observed_status": status,
                  "provider_status": observation.provider_status},
        )  # fmt: skip
        self._log.info("webhook_recorded", applied=False, superseded_attempt=attempt)
        return "ignored"

    async def _fail_over(
        self, job: JobRecord, observation: Observation, received: dict[str, str]
    ) -> str:
        assert self.router is not None and observation.error is not None
        outcome = await fail_over(
            self.store, self.router, job, error=observation.error, source="webhook",
            data={**received, "provider_status": observation.provider_status},
        )  # fmt: skip
        applied = outcome != "stale"
        self._log.info("webhook_recorded", applied=applied, failed_over=outcome)
        return "applied" if applied else "ignored"

    @staticmethod
    async def _parse(
        adapter: ProviderAdapter, job: JobRecord, request: web.Request, body: bytes
    ) -> Observation:
        try:
            return await adapter.parse_callback(job, request.headers, body)
        except InvalidCallback as exc:
            raise Unauthorized(f"callback refused: {exc}", code=exc.code) from exc
        except MalformedCallback as exc:
            raise BadRequest(str(exc), code=exc.code, details=exc.details) from exc

    async def _authenticate(
        self, job_id: str, provider: str, token: str
    ) -> tuple[JobRecord, int | None]:
        """The job, and the superseded attempt the token belongs to (None: the current one)."""
        job = await self.store.lookup(job_id)
        token_hash = hash_callback_token(token)
        presented = token_hash.encode()
        expected = (job.callback_token_hash if job else None) or ""
        # Compared even for an unknown job, so timing tells nothing about which jobs exist.
        valid = hmac.compare_digest(presented, expected.encode().ljust(len(presented), b"\0"))
        if job is not None and expected and valid and job.provider == provider:
            return job, None
        if job is not None and job.route is not None:
            attempt = await self.store.superseded_attempt(
                job_id, provider=provider, token_hash=token_hash
            )
            if attempt is not None:
                return job, attempt
        raise Unauthorized("unknown job or wrong callback token", code="invalid_callback_token")
