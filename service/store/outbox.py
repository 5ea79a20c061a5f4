"""The client webhook outbox (PostgreSQL): rows written by a trigger in the transaction of each
`status_changed` event, each with a snapshot of the job's public fields, claimed by lease like
jobs, every attempt recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from schemas.jobs import Job
from schemas.webhooks import WebhookAttempt, WebhookDelivery
from service.db.database import Database
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


def _delivery(row: asyncpg.Record) -> Delivery:
    snapshot = dict(row["job_snapshot"])
    for column in _SNAPSHOT_TIMES:
        if snapshot.get(column):
            snapshot[column] = datetime.fromisoformat(snapshot[column])
    return Delivery(
        id=row["id"], job_id=row["job_id"], event_id=row["event_id"],
        event_type=row["event_type"], event_at=row["event_at"], url=row["url"],
        attempts=row["attempts"], job=job_from_row(snapshot),
    )  # fmt: skip


def _view(row: asyncpg.Record) -> WebhookDelivery:
    pending = row["state"] == "pending"
    return WebhookDelivery(
        webhook_id=f"msg_{row['event_id']}", event_id=row["event_id"], type=row["event_type"],
        url=row["url"], state=row["state"],
        attempts=[WebhookAttempt.model_validate(a) for a in row["attempt_log"]],
        next_attempt_at=row["next_attempt_at"] if pending else None,
        last_error=row["last_error"], created_at=row["created_at"],
        finished_at=row["finished_at"],
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
        return [_view(row) for row in await self.db.fetch("list_webhook_deliveries", job_id)]
