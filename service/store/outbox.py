"""The client webhook outbox (PostgreSQL): rows written by a trigger in the transaction of each
`status_changed` event, each with a snapshot of the job's public fields, claimed by lease like
jobs, every attempt recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
import orjson

from schemas.common import format_timestamp
from schemas.jobs import Job
from schemas.webhooks import WebhookAttempt, WebhookDelivery
from service.db.database import Database
from service.db.queries import query
from service.store.postgres import job_from_row

_SNAPSHOT_TIMES = ("created_at", "updated_at", "completed_at", "cancel_requested_at")


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery: the message (event) and the job as it was at that event."""

    id: int
    job_id: str
    event_id: int
    event_type: str
    event_at: datetime
    url: str
    attempts: int
    job: Job
    requeued: bool = False  # finished once, requeued by an operator: exactly one more attempt
    traceparent: str | None = None  # the job's trace (service.tracing), which each attempt joins


WEBHOOK_ID_PREFIX = "msg_"
RETRY_REQUESTED = "webhook_retry_requested"  # the job event recording a retry or a recovery


def webhook_id_of(event_id: int) -> str:
    """The Standard Webhooks `webhook-id` of the delivery of event `event_id`."""
    return f"{WEBHOOK_ID_PREFIX}{event_id}"


def event_id_of(webhook_id: str) -> int | None:
    """The event id a `webhook-id` names (None: not one this service writes)."""
    digits = webhook_id.removeprefix(WEBHOOK_ID_PREFIX)
    if digits == webhook_id or not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


@dataclass(frozen=True)
class RetryResult:
    """What a retry request found: `requeued` (due now; `delivery` as committed), `in_flight`
    (an attempt is under way: nothing changed), or `not_found` (no such job or delivery)."""

    outcome: Literal["requeued", "in_flight", "not_found"]
    delivery: WebhookDelivery | None = None


def _delivery(row: asyncpg.Record) -> Delivery:
    snapshot = dict(row["job_snapshot"])
    for column in _SNAPSHOT_TIMES:
        if snapshot.get(column):
            snapshot[column] = datetime.fromisoformat(snapshot[column])
    return Delivery(
        id=row["id"], job_id=row["job_id"], event_id=row["event_id"],
        event_type=row["event_type"], event_at=row["event_at"], url=row["url"],
        attempts=row["attempts"], job=job_from_row(snapshot),
        requeued=row["state"] == "pending" and row["finished_at"] is not None,
        traceparent=row["traceparent"],
    )  # fmt: skip


def _view(row: asyncpg.Record) -> WebhookDelivery:
    pending = row["state"] == "pending"
    return WebhookDelivery(
        webhook_id=webhook_id_of(row["event_id"]), event_id=row["event_id"], type=row["event_type"],
        url=row["url"], state=row["state"],
        attempts=[WebhookAttempt.model_validate(a) for a in row["attempt_log"]],
        next_attempt_at=row["next_attempt_at"] if pending else None,
        last_error=row["last_error"], created_at=row["created_at"],
        finished_at=None if pending else row["finished_at"],
    )  # fmt: skip


class WebhookOutbox:
    """Claims, attempts and history of client webhook deliveries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[Delivery]:
        rows = await self.db.fetch("claim_webhook_deliveries", owner, limit, lease_seconds)
        return [_delivery(row) for row in rows]

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self.db.fetchval("next_webhook_due")
        return value

    async def release_leases(self, *, owner: str, lease_seconds: float) -> int:
        """Graceful shutdown: the deliveries `owner` still holds are due now (NOTIFY)."""
        released: int = await self.db.fetchval("release_webhook_leases", owner, lease_seconds)
        return released

    async def record_attempt(
        self,
        delivery_id: int,
        *,
        owner: str,
        sent_at: datetime,
        duration_ms: float,
        status: int | None,
        error: str | None,
        outcome: str,
        next_at: datetime | None,
    ) -> None:
        """One attempt and its outcome: delivered, stopped (410), retry at `next_at`, failed."""
        await self.db.fetchval(
            "record_webhook_attempt", delivery_id, owner, sent_at, duration_ms, status, error,
            outcome, next_at,
        )  # fmt: skip

    async def backlog(self) -> tuple[int, float]:
        """(pending deliveries, seconds the most overdue of them has been due; 0 if none)."""
        row = await self.db.fetchrow("webhook_backlog")
        assert row is not None
        return int(row["pending"]), float(row["overdue_s"])

    async def deliveries_of(self, job_id: str) -> list[WebhookDelivery]:
        rows = await self.db.fetch("list_webhook_deliveries", job_id, None)
        return [_view(row) for row in rows]

    async def retry(self, job_id: str, webhook_id: str, *, via: str) -> RetryResult:
        """One more attempt, now, of the job's delivery `webhook_id` (same webhook-id, same
        body), recorded as the job's event `webhook_retry_requested` (source `api`) in the same
        transaction; the deliverers are woken at commit. A delivery waiting for its next
        scheduled retry is made due now (its schedule then goes on); a finished one (delivered,
        failed, stopped) gets exactly one more attempt."""
        event_id = event_id_of(webhook_id)
        if event_id is None:
            return RetryResult("not_found")
        async with self.db.connection() as conn, conn.transaction():
            if await conn.fetchval(query("lock_job_for_webhooks"), job_id) is None:
                return RetryResult("not_found")
            row = await conn.fetchrow(query("requeue_webhook_delivery"), job_id, event_id)
            if row is None:
                exists = await conn.fetchval(query("webhook_delivery_exists"), job_id, event_id)
                return RetryResult("in_flight" if exists else "not_found")
            if row["outcome"] == "in_flight":
                return RetryResult("in_flight")
            data = {"webhook_id": webhook_id, "previous_state": row["previous_state"], "via": via}
            await conn.execute(
                query("record_job_events"),
                [job_id], [RETRY_REQUESTED], ["api"], [orjson.dumps(data).decode()],
            )  # fmt: skip
            await conn.execute(query("notify_webhooks_due"))
            view = await conn.fetchrow(query("list_webhook_deliveries"), job_id, event_id)
        assert view is not None
        return RetryResult("requeued", _view(view))

    async def recover(self, since: datetime, *, via: str) -> list[tuple[str, str]]:
        """Every delivery that ended `failed` at or after `since` made due now for one more
        attempt (same webhook-id, same body), each recorded as its job's event
        `webhook_retry_requested` (source `api`), all in one transaction; the deliverers are
        woken at commit. Returns the requeued deliveries as (job id, webhook id)."""
        async with self.db.connection() as conn, conn.transaction():
            job_ids = [
                r["id"] for r in await conn.fetch(query("lock_jobs_with_failed_webhooks"), since)
            ]
            if not job_ids:
                return []
            rows = await conn.fetch(query("requeue_failed_webhook_deliveries"), since, job_ids)
            rows = sorted(rows, key=lambda r: (r["job_id"], r["event_id"]))
            webhook_ids = [webhook_id_of(r["event_id"]) for r in rows]
            data = [
                orjson.dumps({
                    "webhook_id": webhook_id, "previous_state": "failed", "via": via,
                    "recover_since": format_timestamp(since),
                }).decode()
                for webhook_id in webhook_ids
            ]  # fmt: skip
            await conn.execute(
                query("record_job_events"),
                [r["job_id"] for r in rows], [RETRY_REQUESTED] * len(rows), ["api"] * len(rows),
                data,
            )  # fmt: skip
            await conn.execute(query("notify_webhooks_due"))
        return [(r["job_id"], webhook_id) for r, webhook_id in zip(rows, webhook_ids, strict=True)]
