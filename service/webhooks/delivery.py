"""Client webhooks: delivery of the outbox rows the database writes with each status change.

Per the Standard Webhooks specification: the body is `{"type": "job.<status>", "timestamp",
"data": <job>}`, signed with `standardwebhooks` over `id.timestamp.body`; `webhook-id` is the
delivery's and stays the same across retries. A non-2xx answer or a timeout is retried on
CLIENT_WEBHOOK_RETRY_SCHEDULE with jitter (later if the client asks with Retry-After); 410 stops
delivery for the job; every attempt is recorded (readable at GET /v1/jobs/{id}/webhooks).
A delivery requeued by an operator (retry, recover: service.store.outbox) gets one attempt.

Deliveries are claimed by lease with SKIP LOCKED, so instances share them. Each endpoint
(scheme, host, port) has its own concurrency limit, so a slow client delays only itself.
Targets on loopback, private or link-local addresses are refused after DNS resolution, at
connect time (no window for DNS rebinding), unless CLIENT_WEBHOOK_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks import Webhook

from schemas.common import format_timestamp
from service import tracing
from service.errors import DatabaseUnavailable
from service.logs import get_logger
from service.metrics import CLIENT_WEBHOOK_ATTEMPTS
from service.netguard import NonPublicAddress, PublicOnlyResolver, is_non_public_literal
from service.providers.http import parse_retry_after
from service.store.outbox import Delivery, WebhookOutbox, webhook_id_of
from service.workers.claim_loop import ClaimLoop

ATTEMPT_TIMEOUT_S = 15.0
#: client_webhook_attempts_total's outcome for each outcome recorded in the database.
ATTEMPT_OUTCOMES = {
    "delivered": "delivered",
    "retry": "failed_retrying",
    "failed": "failed_final",
    "stopped": "stopped_410",
}
MAX_ERROR_CHARS = 500


def webhook_body(delivery: Delivery) -> bytes:
    """The signed body: the same bytes on every attempt (the job as it was at the event)."""
    return orjson.dumps(
        {
            "type": delivery.event_type,
            "timestamp": format_timestamp(delivery.event_at),
            "data": delivery.job.body(),
        }
    )


def retry_delay(
    schedule: Sequence[float], attempts_done: int, *, retry_after: float | None
) -> float | None:
    """Seconds before the next attempt, or None when the schedule is exhausted."""
    if attempts_done > len(schedule):
        return None
    base = schedule[attempts_done - 1]
    delay = base * random.uniform(1.0, 1.2)  # jitter added, never subtracted
    return max(delay, retry_after or 0.0)


def endpoint_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class WebhookDeliverer(ClaimLoop[Delivery]):
    """Claims due deliveries and sends them."""

    def __init__(
        self,
        *,
        outbox: WebhookOutbox,
        secret: str,
        retry_schedule: Sequence[float],
        allow_private: bool,
        owner: str | None = None,
        per_endpoint: int = 4,
        batch_size: int = 100,
        lease_s: float = 60.0,
        idle_wait_s: float = 1.0,
    ) -> None:
        super().__init__(
            name="webhook",
            batch_size=batch_size,
            idle_wait_s=idle_wait_s,
            log=get_logger("service.webhooks"),
        )
        self.outbox = outbox
        self.signer = Webhook(secret)
        self.retry_schedule = tuple(retry_schedule)
        self.allow_private = allow_private
        self.owner = owner or f"webhooks-{secrets.token_hex(6)}"
        self.per_endpoint = per_endpoint
        self.lease_s = lease_s
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self.allow_private else PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=0),
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S),
            )
        return self._session

    async def claim(self) -> list[Delivery]:
        return await self.outbox.claim(
            owner=self.owner, limit=self.batch_size, lease_seconds=self.lease_s
        )

    async def next_due(self) -> datetime | None:
        return await self.outbox.next_due_at()

    async def handle(self, delivery: Delivery) -> None:
        await self._deliver_limited(delivery)

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()

    async def _deliver_limited(self, delivery: Delivery) -> None:
        limit = self._limits.setdefault(
            endpoint_of(delivery.url), asyncio.Semaphore(self.per_endpoint)
        )
        try:
            async with limit:
                if self.stopping:  # shutting down: not sent, its lease is released instead
                    return
                await self._deliver(delivery)
        except DatabaseUnavailable:
            self._log.warning(
                "webhook_record_deferred_database_unavailable", delivery_id=delivery.id
            )
        except Exception:
            self._log.exception("webhook_delivery_crashed", delivery_id=delivery.id)

    def _refused_literal(self, url: str) -> bool:
        return not self.allow_private and is_non_public_literal(url)

    async def _deliver(self, delivery: Delivery) -> None:
        msg_id = webhook_id_of(delivery.event_id)
        # Each attempt is a span of the job's trace, whichever instance sends it.
        with tracing.span(
            "client_webhook.attempt", parent=delivery.traceparent,
            attributes={"job.id": delivery.job_id, "webhook.id": msg_id,
                        "webhook.type": delivery.event_type,
                        "webhook.attempt": delivery.attempts + 1},
        ):  # fmt: skip
            outcome = await self._attempt(delivery, msg_id)
            tracing.annotate({"webhook.outcome": outcome})

    async def _attempt(self, delivery: Delivery, msg_id: str) -> str:
        """Sends the delivery once and records the attempt; returns the recorded outcome."""
        body = webhook_body(delivery)
        sent_at = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self.signer.sign(msg_id, sent_at, body.decode()),
            "User-Agent": "imagejobs-webhooks/1",
        }
        started = time.perf_counter()
        with tracing.client_span("POST", delivery.url, headers):  # adds `traceparent`
            status, retry_after, error, refused = await self._send(delivery.url, body, headers)
            tracing.http_outcome(status, error)
        duration_ms = (time.perf_counter() - started) * 1000
        attempts_done = delivery.attempts + 1
        next_at = None
        if status is not None and 200 <= status < 300:
            outcome = "delivered"
        elif status == 410:
            outcome = "stopped"
        elif refused:
            outcome = "failed"  # a forbidden target stays forbidden: no point retrying
        else:
            # an operator's retry or recovery (requeued) is one attempt, with no schedule after
            delay = None
            if not delivery.requeued:
                delay = retry_delay(self.retry_schedule, attempts_done, retry_after=retry_after)
            outcome = "retry" if delay is not None else "failed"
            if delay is not None:
                next_at = datetime.now(UTC) + timedelta(seconds=delay)
            if error is None:
                error = f"http {status}"
        CLIENT_WEBHOOK_ATTEMPTS.labels(ATTEMPT_OUTCOMES[outcome]).inc()  # even if not recorded
        await self.outbox.record_attempt(
            delivery.id, owner=self.owner, sent_at=sent_at, duration_ms=duration_ms,
            status=status, error=error, outcome=outcome, next_at=next_at,
        )  # fmt: skip
        self._log.info(
            "webhook_attempted", job_id=delivery.job_id, webhook_id=msg_id, status=status,
            outcome=outcome, attempt=attempts_done,
        )  # fmt: skip
        if next_at is not None:
            self.wake_if_sooner(next_at)
        return outcome

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None, str | None, bool]:
        """One attempt: (status, retry_after, error, refused_target)."""
        if self._refused_literal(url):
            return (
                None,
                None,
                "webhook target is not a public address (CLIENT_WEBHOOK_ALLOW_PRIVATE is off)",
                True,
            )
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return (
                    response.status,
                    parse_retry_after(response.headers.get("Retry-After")),
                    None,
                    False,
                )
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, NonPublicAddress)
            return None, None, f"connection failed: {exc.os_error}"[:MAX_ERROR_CHARS], refused
        except (aiohttp.ClientError, TimeoutError) as exc:
            return (
                None,
                None,
                (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[
                    :MAX_ERROR_CHARS
                ],
                False,
            )
