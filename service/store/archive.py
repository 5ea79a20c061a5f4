"""The output archive queue (PostgreSQL): rows written by a trigger in the transaction that makes
a job succeed, one per output, claimed by lease like jobs and webhook deliveries. Recording an
outcome is one SQL function each (sql/migrations/0003_output_archive.sql), which refuses a
second record of the same output."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.db.database import Database


@dataclass(frozen=True)
class ArchiveItem:
    """One claimed output: where to fetch it, how many claims it has had (this one included),
    and its job's trace context (`jobs.traceparent`, None when the job was not traced)."""

    job_id: str
    index: int
    url: str
    attempts: int
    traceparent: str | None = None


@dataclass(frozen=True)
class ArchivedOutput:
    """What was stored for one output."""

    storage_key: str
    sha256: str
    bytes: int
    content_type: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class OutputLookup:
    """One output of a job, as the API serves it."""

    exists: bool  # the job has an output at this index
    archived: ArchivedOutput | None


def _item(row: asyncpg.Record) -> ArchiveItem:
    return ArchiveItem(
        job_id=row["job_id"], index=row["output_index"], url=row["url"],
        attempts=row["attempts"], traceparent=row["traceparent"],
    )  # fmt: skip


class ArchiveQueue:
    """Claims and outcomes of output archiving, and the archived outputs the API serves."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ArchiveItem]:
        rows = await self.db.fetch("claim_output_archives", owner, limit, lease_seconds)
        return [_item(row) for row in rows]

    async def release_leases(self, *, owner: str, lease_seconds: float) -> int:
        """Graceful shutdown: the outputs `owner` still holds are due now (NOTIFY)."""
        released: int = await self.db.fetchval(
            "release_output_archive_leases", owner, lease_seconds
        )
        return released

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self.db.fetchval("next_output_archive_due")
        return value

    async def record_archived(
        self, item: ArchiveItem, *, owner: str, output: ArchivedOutput
    ) -> tuple[bool, bool]:
        """(recorded, all of the job's outputs now archived); not recorded when the lease was
        lost or the output was already recorded."""
        row = await self.db.fetchrow(
            "record_output_archived", item.job_id, item.index, owner, output.storage_key,
            output.sha256, output.bytes, output.content_type, output.width, output.height,
        )  # fmt: skip
        assert row is not None
        return bool(row["recorded"]), bool(row["all_archived"])

    async def record_failure(
        self, item: ArchiveItem, *, owner: str, code: str, reason: str, retry_at: datetime | None
    ) -> bool:
        """A failed attempt: retried at `retry_at`, or given up (None: one output_archive_failed
        event)."""
        value = await self.db.fetchval(
            "record_output_attempt_failed", item.job_id, item.index, owner, code, reason, retry_at
        )
        return bool(value)

    async def lookup(self, job_id: str, index: int) -> OutputLookup | None:
        """None when there is no such job."""
        row = await self.db.fetchrow("get_output_archive", job_id, index)
        if row is None:
            return None
        archived = None
        if row["state"] == "archived":
            archived = ArchivedOutput(
                storage_key=row["storage_key"], sha256=row["sha256"], bytes=row["bytes"],
                content_type=row["content_type"],
            )  # fmt: skip
        return OutputLookup(exists=bool(row["exists"]), archived=archived)

    async def backlog(self) -> int:
        """Outputs waiting to be archived (pending, claimed or not)."""
        return int(await self.db.fetchval("output_archive_backlog"))
