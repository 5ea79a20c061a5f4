"""Provider callbacks: `POST /callbacks/{krea|fal}/{job_id}/{token}`.

Store, then acknowledge: a callback is answered 2xx only after its observation is committed; if
the database is unreachable it gets 503 and the provider retries. A callback is accepted only
with the job's own token (at least 256 random bits, compared by hash in constant time) and, for
fal, a valid Ed25519 signature; otherwise 401 and nothing changes. Because the token is in the
URL the job was submitted with, a callback that arrives before the submit answer was recorded
(the provider was fast) is still matched to its job and applied.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from pydantic import ValidationError

from schemas.providers import FalWebhook, KreaJob, KreaState
from service.callback_tokens import hash_callback_token
from service.errors import BadRequest, Unauthorized
from service.logs import get_logger
from service.metrics import CALLBACKS
from service.providers.base import InvalidCallback, JobRecord, Observation, read_state
from service.providers.fal import observe_fal_webhook
from service.providers.fal_signature import FalWebhookVerifier
from service.providers.krea import observe_krea_job
from service.store import JobStore
from service.web.bodies import CALLBACK_BODY_LIMIT, read_body
from service.web.middleware import json_response

Parser = Callable[[JobRecord, bytes, web.Request], Awaitable[Observation]]


class CallbacksApi:
    """Receivers of provider callbacks."""

    def __init__(self, store: JobStore, *, fal_verifier: FalWebhookVerifier | None) -> None:
        self.store = store
        self.fal_verifier = fal_verifier
        self._log = get_logger("service.callbacks")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/callbacks/krea/{job_id}/{token}", self.krea),
            web.post("/callbacks/fal/{job_id}/{token}", self.fal),
        ]

    async def krea(self, request: web.Request) -> web.Response:
        return await self._receive(request, "krea", self._parse_krea)

    async def fal(self, request: web.Request) -> web.Response:
        return await self._receive(request, "fal", self._parse_fal)

    async def _parse_krea(self, job: JobRecord, body: bytes, _request: web.Request) -> Observation:
        try:
            payload = KreaJob.model_validate_json(body)
        except ValidationError as exc:
            raise BadRequest(
                "callback body is not a Krea job object", code="invalid_callback"
            ) from exc
        if job.provider_job_id is not None and payload.job_id != job.provider_job_id:
            raise Unauthorized("callback names another provider job", code="invalid_callback")
        return observe_krea_job(payload, read_state(KreaState, job).request)

    async def _parse_fal(self, job: JobRecord, body: bytes, request: web.Request) -> Observation:
        if self.fal_verifier is None:
            raise Unauthorized("fal is not configured on this instance", code="invalid_signature")
        try:
            signed_request_id = await self.fal_verifier.verify(request.headers, body)
        except InvalidCallback as exc:
            raise Unauthorized(f"fal webhook refused: {exc}", code="invalid_signature") from exc
        try:
            payload = FalWebhook.model_validate_json(body)
        except ValidationError as exc:
            raise BadRequest("callback body is not a fal webhook", code="invalid_callback") from exc
        if payload.request_id != signed_request_id:
            raise Unauthorized(
                "body and signature name different requests", code="invalid_signature"
            )
        if job.provider_job_id is not None and payload.request_id != job.provider_job_id:
            raise Unauthorized("callback names another provider request", code="invalid_callback")
        return observe_fal_webhook(job, payload)

    async def _receive(self, request: web.Request, provider: str, parse: Parser) -> web.Response:
        received_at = datetime.now(UTC)
        job_id = request.match_info["job_id"]
        structlog.contextvars.bind_contextvars(job_id=job_id, provider=provider)
        body = await read_body(request, limit=CALLBACK_BODY_LIMIT)
        try:
            job = await self._authenticate(job_id, provider, request.match_info["token"])
            observation = await parse(job, body, request)
        except (Unauthorized, BadRequest) as exc:
            CALLBACKS.labels(provider=provider, outcome="rejected").inc()
            self._log.warning("webhook_rejected", reason=exc.message)
            raise
        if observation.status is None:
            CALLBACKS.labels(provider=provider, outcome="ignored").inc()
            return json_response({"status": "ignored"})
        result = await self.store.apply_observation(
            job.id,
            observation.status,
            source="webhook",
            data={
                **observation.data,
                "received_at": received_at.isoformat(),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            },
            provider_job_id=observation.provider_job_id,
            outputs=observation.outputs,
            error=observation.error,
            record_ignored=True,
        )
        outcome = "applied" if result.applied else "ignored"
        CALLBACKS.labels(provider=provider, outcome=outcome).inc()
        self._log.info(
            "webhook_recorded", applied=result.applied, provider_status=observation.provider_status
        )
        return json_response({"status": outcome})

    async def _authenticate(self, job_id: str, provider: str, token: str) -> JobRecord:
        job = await self.store.lookup(job_id)
        presented = hash_callback_token(token).encode()
        expected = (job.callback_token_hash if job else None) or ""
        # Compared even for an unknown job, so timing tells nothing about which jobs exist.
        valid = hmac.compare_digest(presented, expected.encode().ljust(len(presented), b"\0"))
        if job is None or not expected or not valid or job.provider != provider:
            raise Unauthorized("unknown job or wrong callback token", code="invalid_callback_token")
        return job
