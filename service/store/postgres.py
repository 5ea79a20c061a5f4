"""The PostgreSQL store: the SQL functions in sql/ do each change (job row, event with its
per-job seq, NOTIFY) in one statement, so that it is atomic and the forward-only rule is decided
inside the commit; this module turns their rows into the boundary models.

Writes on the hot paths (job creation, observations, submission starts) and the callback
receivers' lookups are write-combined: concurrent callers share one statement and one commit per
batch (service.db.batcher), each still answered only after its batch is committed. That is how
the store writes; a batch of one is the naive one-transaction-per-change design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from schemas.events import Event, EventSource
from schemas.jobs import Job, JobAttempt, JobCreate, JobError, JobOutput, JobStatus
from service.db.batcher import Batcher
from service.db.database import Database
from service.providers.base import JobRecord, Observation
from service.store.base import (
    ApplyResult,
    CancelResult,
    CompletionTimes,
    CreateResult,
    NextAttempt,
    Schedule,
    new_job_id,
    request_hash,
)


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def escape_like(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (backslash is LIKE's escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def job_from_row(row: asyncpg.Record) -> Job:
    """The API's job object from a `jobs` row (or a row that expands one); a routed job shows
    the common model asked for, and its attempts when the row carries them (`attempts`)."""
    outputs = row["outputs"] or []
    error = row["error"]
    attempts = row.get("attempts")
    return Job(
        id=row["id"],
        provider=row["provider"],
        model=row.get("route") or row["model"],
        status=JobStatus(row["status"]),
        provider_job_id=row["provider_job_id"],
        input=row["input"],
        metadata=row["metadata"],
        webhook_url=row["webhook_url"],
        outputs=[JobOutput.model_validate(o) for o in outputs],
        error=JobError.model_validate(error) if error else None,
        cancel_requested=row["cancel_requested_at"] is not None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        attempts=None if attempts is None else [JobAttempt.model_validate(a) for a in attempts],
    )


def record_from_row(row: asyncpg.Record) -> JobRecord:
    """The internal view of a job that workers and adapters use: a routed job's current attempt
    (its provider, the provider's model, the input translated for it)."""
    routed = row["route"] is not None
    return JobRecord(
        id=row["id"],
        provider=row["provider"],
        model=row["model"],
        status=JobStatus(row["status"]),
        provider_job_id=row["provider_job_id"],
        input=row["provider_input"] if routed else row["input"],
        provider_state=row["provider_state"],
        cancel_requested=row["cancel_requested_at"] is not None,
        submit_started_at=row["submit_started_at"],
        submitted_at=row["submitted_at"],
        attempts=row["checks"],
        created_at=row["created_at"],
        submit_attempts=row["submit_attempts"],
        cancel_sent=row["cancel_sent_at"] is not None,
        callback_token_hash=row["callback_token_hash"],
        deadline_at=row["deadline_at"],
        due_at=row["last_due_at"],
        submit_unknown_at=row["submit_unknown_at"],
        route=row["route"],
        attempt=row["attempt"],
        route_input=row["input"] if routed else None,
        traceparent=row["traceparent"],
    )


def event_from_row(row: asyncpg.Record) -> Event:
    return Event(
        id=row["id"],
        job_id=row["job_id"],
        seq=row["seq"],
        type=row["type"],
        from_status=row["from_status"],
        to_status=row["to_status"],
        source=row["source"],
        data=row["data"],
        created_at=row["created_at"],
        prev_hash=row.get("prev_hash"),
        hash=row.get("hash"),
    )


@dataclass(frozen=True)
class _Creation:
    request: JobCreate
    idempotency_key: str | None
    timeout_s: float
    job_id: str
    traceparent: str | None


@dataclass(frozen=True)
class _Application:
    job_id: str
    observation: Observation
    source: EventSource
    record_ignored: bool
    provider_state: dict[str, Any] | None
    schedule: Schedule | None


@dataclass(frozen=True)
class _Begin:
    job_id: str
    owner: str
    token_hash: str
    request: dict[str, Any]


class PostgresJobStore:
    """The JobStore on PostgreSQL (see service.store.base for the contract of each method)."""

    def __init__(self, db: Database, *, max_batch: int = 256) -> None:
        self.db = db
        self._lookups = Batcher(self._flush_lookups, max_batch=max_batch)
        self._applications = Batcher(self._flush_applications, max_batch=max_batch)
        self._creations = Batcher(self._flush_creations, max_batch=max_batch)
        self._begins = Batcher(self._flush_begins, max_batch=max_batch)

    async def close(self) -> None:
        for batcher in (self._lookups, self._applications, self._creations, self._begins):
            await batcher.close()

    # --- the jobs API ------------------------------------------------------------------------

    async def create_job(
        self,
        request: JobCreate,
        *,
        idempotency_key: str | None,
        timeout_s: float = 3600.0,
        job_id: str | None = None,
        traceparent: str | None = None,
    ) -> CreateResult:
        creation = _Creation(
            request, idempotency_key, timeout_s, job_id or new_job_id(), traceparent
        )
        return await self._creations.submit(creation)

    async def _flush_creations(self, items: Sequence[_Creation]) -> list[CreateResult]:
        rows = await self.db.fetch(
            "create_jobs",
            [i.job_id for i in items],
            [i.request.provider for i in items],
            [i.request.model for i in items],
            [_json_text(i.request.input) for i in items],
            [_json_text(i.request.metadata) for i in items],
            [i.request.webhook_url for i in items],
            [i.idempotency_key for i in items],
            [request_hash(i.request) for i in items],
            [i.timeout_s for i in items],
            [i.traceparent for i in items],
        )
        by_ord = {row["ord"]: row for row in rows}
        return [
            CreateResult(
                job=job_from_row(by_ord[n]),
                created=by_ord[n]["created"],
                request_hash=by_ord[n]["request_hash"],
            )
            for n in range(1, len(items) + 1)
        ]

    async def create_routed_job(
        self,
        request: JobCreate,
        *,
        idempotency_key: str | None,
        first: NextAttempt,
        event_data: dict[str, Any],
        job_id: str | None = None,
        traceparent: str | None = None,
    ) -> CreateResult:
        row = await self.db.fetchrow(
            "create_routed_job", job_id or new_job_id(), request.model, first.provider,
            first.model, request.input, first.input, first.adjustments, request.metadata,
            request.webhook_url, idempotency_key, request_hash(request), event_data,
            first.timeout_s, traceparent,
        )  # fmt: skip
        assert row is not None
        return CreateResult(
            job=job_from_row(row), created=row["created"], request_hash=row["request_hash"]
        )

    async def fail_over_attempt(
        self,
        job_id: str,
        *,
        attempt: int,
        source: EventSource,
        error: JobError,
        data: dict[str, Any],
        next_attempt: NextAttempt | None,
    ) -> str:
        nxt = next_attempt
        value: str = await self.db.fetchval(
            "fail_over_attempt", job_id, attempt, source, error.model_dump(mode="json"), data,
            nxt.provider if nxt else None, nxt.model if nxt else None,
            nxt.input if nxt else None, nxt.adjustments if nxt else None,
            nxt.timeout_s if nxt else 0.0,
        )  # fmt: skip
        return value

    async def superseded_attempt(
        self, job_id: str, *, provider: str, token_hash: str
    ) -> int | None:
        value: int | None = await self.db.fetchval(
            "superseded_attempt", job_id, provider, token_hash
        )
        return value

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.db.fetchrow("get_job", job_id)
        return job_from_row(row) if row else None

    async def list_jobs(
        self,
        *,
        provider: str | None,
        status: str | None,
        limit: int,
        before_id: str | None,
        search: str | None = None,
    ) -> tuple[list[Job], str | None]:
        pattern = None if search is None else f"%{escape_like(search)}%"
        rows = await self.db.fetch(
            "list_jobs", provider, status, before_id, limit + 1, search, pattern
        )
        jobs = [job_from_row(row) for row in rows[:limit]]
        return jobs, jobs[-1].id if len(rows) > limit else None

    async def job_exists(self, job_id: str) -> bool:
        return bool(await self.db.fetchval("job_exists", job_id))

    async def request_cancel(self, job_id: str) -> CancelResult:
        row = await self.db.fetchrow("request_cancel", job_id)
        assert row is not None
        job = job_from_row(row) if row["id"] is not None else None
        return CancelResult(outcome=row["outcome"], job=job)

    # --- the log -----------------------------------------------------------------------------

    async def list_events(self, job_id: str) -> list[Event]:
        return [event_from_row(row) for row in await self.db.fetch("list_events", job_id)]

    async def events_after(self, after: int, *, job_id: str | None, limit: int) -> list[Event]:
        if job_id is None:
            rows = await self.db.fetch("events_after", after, limit)
        else:
            rows = await self.db.fetch("job_events_after", job_id, after, limit)
        return [event_from_row(row) for row in rows]

    async def last_event_id(self) -> int:
        return int(await self.db.fetchval("last_event_id"))

    async def live_jobs(self) -> dict[tuple[str, str], tuple[int, float]]:
        """{(status, provider): (jobs, age in seconds of the oldest)} of non-terminal jobs."""
        rows = await self.db.fetch("live_jobs_by_status")
        return {(r["status"], r["provider"]): (int(r["jobs"]), float(r["oldest_s"])) for r in rows}

    # --- provider news -----------------------------------------------------------------------

    async def lookup(self, job_id: str) -> JobRecord | None:
        return await self._lookups.submit(job_id)

    async def _flush_lookups(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        rows = await self.db.fetch("get_jobs", list(set(job_ids)))
        found = {row["id"]: record_from_row(row) for row in rows}
        return [found.get(job_id) for job_id in job_ids]

    async def apply_observation(
        self,
        job_id: str,
        observation: Observation,
        *,
        source: EventSource,
        record_ignored: bool = False,
        provider_state: dict[str, Any] | None = None,
        schedule: Schedule | None = None,
    ) -> ApplyResult:
        assert observation.status is not None, "an observation without a status changes nothing"
        return await self._applications.submit(
            _Application(job_id, observation, source, record_ignored, provider_state, schedule)
        )

    async def _flush_applications(self, items: Sequence[_Application]) -> list[ApplyResult]:
        observations = [i.observation for i in items]
        rows = await self.db.fetch(
            "apply_observations",
            [i.job_id for i in items],
            [o.status.value if o.status else None for o in observations],
            [i.source for i in items],
            [_json_text(o.data) for o in observations],
            [o.provider_job_id for o in observations],
            [_json_text(_outputs(o)) for o in observations],
            [
                _json_text(o.error.model_dump(mode="json") if o.error else None)
                for o in observations
            ],
            [i.record_ignored for i in items],
            [_json_text(i.provider_state) for i in items],
            [i.schedule.next_action_at if i.schedule else None for i in items],
            [i.schedule.owner if i.schedule else None for i in items],
        )
        by_ord = {row["ord"]: row for row in rows}
        return [
            ApplyResult(applied=by_ord[n]["applied"], event_id=by_ord[n]["event_id"])
            for n in range(1, len(items) + 1)
        ]

    # --- the workers -------------------------------------------------------------------------

    async def claim_due(self, *, owner: str, limit: int, lease_seconds: float) -> list[JobRecord]:
        rows = await self.db.fetch("claim_due_jobs", owner, limit, lease_seconds)
        return [record_from_row(row) for row in rows]

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self.db.fetchval("next_due_at")
        return value

    async def release_leases(self, *, owner: str, lease_seconds: float) -> int:
        """Graceful shutdown: the jobs `owner` still holds are due now (NOTIFY jobs_due)."""
        released: int = await self.db.fetchval("release_job_leases", owner, lease_seconds)
        return released

    async def settle_writes(self) -> None:
        """Waits until every write queued in the batchers is committed or failed (shutdown:
        a cancelled caller's write still runs, and must not land after the leases are released)."""
        for batcher in (self._lookups, self._applications, self._creations, self._begins):
            await batcher.settled()

    async def completion_times(self, provider: str, model: str) -> CompletionTimes:
        row = await self.db.fetchrow("completion_seconds", provider, model)
        assert row is not None
        return CompletionTimes(int(row["samples"]), row["p10"], row["p95"])

    async def begin_submission(
        self, job_id: str, *, owner: str, token_hash: str, request: dict[str, Any]
    ) -> str:
        return await self._begins.submit(_Begin(job_id, owner, token_hash, request))

    async def _flush_begins(self, items: Sequence[_Begin]) -> list[str]:
        """One statement per owner (a batch is nearly always one owner's); outcomes in order."""
        outcomes: dict[int, str] = {}
        for owner in {item.owner for item in items}:
            positions = [n for n, item in enumerate(items) if item.owner == owner]
            rows = await self.db.fetch(
                "begin_submissions",
                [items[n].job_id for n in positions],
                owner,
                [items[n].token_hash for n in positions],
                [_json_text(items[n].request) for n in positions],
            )
            by_ord = {row["ord"]: row["outcome"] for row in rows}
            for k, n in enumerate(positions, start=1):
                outcomes[n] = by_ord[k]
        return [outcomes[n] for n in range(len(items))]

    async def reschedule(
        self,
        job_id: str,
        *,
        owner: str,
        at: datetime,
        clear_submission: bool = False,
        event_type: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> bool:
        value = await self.db.fetchval(
            "reschedule_job", job_id, owner, at, clear_submission, event_type, "system", data or {}
        )
        return bool(value)

    async def record_cancel_sent(
        self,
        job_id: str,
        *,
        owner: str,
        provider_state: dict[str, Any],
        next_action_at: datetime,
        data: dict[str, Any],
    ) -> bool:
        value = await self.db.fetchval(
            "record_cancel_sent", job_id, owner, provider_state, next_action_at, data
        )
        return bool(value)

    async def record_event(
        self, job_id: str, *, type: str, source: EventSource, data: dict[str, Any]
    ) -> int | None:
        value: int | None = await self.db.fetchval("record_job_event", job_id, type, source, data)
        return value

    async def record_submission_unknown(
        self, job_id: str, *, owner: str, next_action_at: datetime, data: dict[str, Any]
    ) -> bool:
        value = await self.db.fetchval(
            "record_submission_unknown", job_id, owner, next_action_at, data
        )
        return bool(value)

    async def resend_unsent_submission(
        self, job_id: str, *, owner: str, data: dict[str, Any]
    ) -> bool:
        return bool(await self.db.fetchval("resend_unsent_submission", job_id, owner, data))

    async def bind_listed_submission(
        self,
        job_id: str,
        *,
        provider: str,
        provider_job_id: str,
        owner: str,
        next_action_at: datetime,
        data: dict[str, Any],
    ) -> bool:
        value = await self.db.fetchval(
            "bind_listed_submission", job_id, provider, provider_job_id, owner, next_action_at, data
        )
        return bool(value)

    async def bound_provider_job_ids(self, provider: str, provider_job_ids: list[str]) -> set[str]:
        if not provider_job_ids:
            return set()
        rows = await self.db.fetch("bound_provider_job_ids", provider, provider_job_ids)
        return {row["provider_job_id"] for row in rows}


def _outputs(observation: Observation) -> list[dict[str, Any]] | None:
    if observation.outputs is None:
        return None
    return [output.model_dump() for output in observation.outputs]
