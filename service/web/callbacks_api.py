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
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import structlog
from aiohttp import web

from service.callback_tokens import hash_callback_token
from service.errors import BadRequest, NotFound, Unauthorized
from service.logs import get_logger
from service.metrics import CALLBACKS
from service.providers.base import (
    InvalidCallback,
    JobRecord,
    MalformedCallback,
    Observation,
    ProviderAdapter,
)
from service.store import JobStore
from service.web.bodies import CALLBACK_BODY_LIMIT, read_body
from service.web.middleware import json_response


class CallbacksApi:
    """The receiver of provider callbacks."""

    def __init__(self, store: JobStore, *, adapters: Mapping[str, ProviderAdapter]) -> None:
        self.store = store
        self.adapters = adapters
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
        body = await read_body(request, limit=CALLBACK_BODY_LIMIT)
        try:
            job = await self._authenticate(job_id, provider, request.match_info["token"])
            observation = await self._parse(adapter, job, request, body)
        except (Unauthorized, BadRequest) as exc:
            CALLBACKS.labels(provider=provider, outcome="rejected").inc()
            self._log.warning("webhook_rejected", reason=exc.message)
            raise
        if observation.status is None:
            CALLBACKS.labels(provider=provider, outcome="ignored").inc()
            return json_response({"status": "ignored"})
        received = {
            "received_at": received_at.isoformat(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        result = await self.store.apply_observation(
            job.id,
            replace(observation, data={**observation.data, **received}),
            source="webhook",
            record_ignored=True,
        )
        outcome = "applied" if result.applied else "ignored"
        CALLBACKS.labels(provider=provider, outcome=outcome).inc()
        self._log.info(
            "webhook_recorded", applied=result.applied, provider_status=observation.provider_status
        )
        return json_response({"status": outcome})

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

    async def _authenticate(self, job_id: str, provider: str, token: str) -> JobRecord:
        job = await self.store.lookup(job_id)
        presented = hash_callback_token(token).encode()
        expected = (job.callback_token_hash if job else None) or ""
        # Compared even for an unknown job, so timing tells nothing about which jobs exist.
        valid = hmac.compare_digest(presented, expected.encode().ljust(len(presented), b"\0"))
        if job is None or not expected or not valid or job.provider != provider:
            raise Unauthorized("unknown job or wrong callback token", code="invalid_callback_token")
        return job
