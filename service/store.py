"""The event store: every state change of a job is one statement, one transaction.

The SQL functions in sql/ do the work (job row, event with its per-job seq, NOTIFY) so that each
change is atomic and the forward-only rule is decided inside the commit; this module turns their
rows into the boundary models in `schemas`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from schemas.events import Event, EventSource
from schemas.jobs import Job, JobCreate, JobError, JobOutput, JobStatus
from service.db.batcher import Batcher
from service.db.database import Database
from service.providers.base import JobRecord

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def new_job_id(now_ms: int | None = None) -> str:
    """`job_` + a ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars))


def request_hash(request: JobCreate) -> str:
    """Fingerprint of a create request, to tell a retry from a reuse of an idempotency key."""
    canonical = orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def job_from_row(row: asyncpg.Record) -> Job:
    """The API's job object from a `jobs` row (or a row that expands one)."""
    outputs = row["outputs"] or []
    error = row["error"]
    return Job(
        id=row["id"],
        provider=row["provider"],
        model=row["model"],
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
    )


def record_from_row(row: asyncpg.Record) -> JobRecord:
    """The internal view of a job that workers and adapters use."""
    return JobRecord(
        id=row["id"],
        provider=row["provider"],
        model=row["model"],
        status=JobStatus(row["status"]),
        provider_job_id=row["provider_job_id"],
        input=row["input"],
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
    )


@dataclass(frozen=True)
class CreateResult:
    job: Job
    created: bool
    request_hash: str


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of one observation: whether it moved the job, and the event it added (if any)."""

    applied: bool
    event_id: int | None


@dataclass(frozen=True)
class CancelResult:
    outcome: str  # not_found | finished | already_requested | requested | canceled
    job: Job | None


@dataclass(frozen=True)
class PendingCreation:
    """One job waiting for its batch (see JobStore.create_job)."""

    request: JobCreate
    idempotency_key: str | None
    timeout_s: float
    job_id: str


@dataclass(frozen=True)
class PendingObservation:
    """One observation waiting for its batch (see JobStore.observe)."""

    job_id: str
    status: str
    source: str
    data: dict[str, Any]
    provider_job_id: str | None
    outputs: list[dict[str, Any]] | None
    error: dict[str, Any] | None
    record_ignored: bool
    provider_state: dict[str, Any] | None = None
    next_action_at: datetime | None = None
    lease_owner: str | None = None


class JobStore:
    """Reads and state changes of jobs and their history.

    With `batching`, the hot paths (`lookup`, `apply_observation`, `create_job`,
    `begin_submission`) are write-combined:
    concurrent callers share one round trip and one commit per batch (service.db.batcher), and
    each still gets its own answer only after its batch is committed.
    """

    def __init__(self, db: Database, *, batching: bool = True, max_batch: int = 256) -> None:
        self.db = db
        self.batching = batching
        self._lookups: Batcher[str, JobRecord | None] = Batcher(
            self._flush_lookups, max_batch=max_batch
        )
        self._observations: Batcher[PendingObservation, ApplyResult] = Batcher(
            self._flush_observations, max_batch=max_batch
        )
        self._creations: Batcher[PendingCreation, CreateResult] = Batcher(
            self._flush_creations, max_batch=max_batch
        )
        self._begins: Batcher[tuple[str, str, str], str] = Batcher(
            self._flush_begins, max_batch=max_batch
        )

    async def close(self) -> None:
        await self._lookups.close()
        await self._observations.close()
        await self._creations.close()
        await self._begins.close()

    async def _flush_creations(self, items: Sequence[PendingCreation]) -> list[CreateResult]:
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

    async def lookup(self, job_id: str) -> JobRecord | None:
        """The job's internal record, batched with concurrent lookups."""
        if not self.batching:
            return await self.get_record(job_id)
        return await self._lookups.submit(job_id)

    async def _flush_lookups(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        rows = await self.db.fetch("get_jobs", list(set(job_ids)))
        found = {row["id"]: record_from_row(row) for row in rows}
        return [found.get(job_id) for job_id in job_ids]

    async def _flush_observations(self, items: Sequence[PendingObservation]) -> list[ApplyResult]:
        rows = await self.db.fetch(
            "apply_observations",
            [i.job_id for i in items],
            [i.status for i in items],
            [i.source for i in items],
            [_json_text(i.data) for i in items],
            [i.provider_job_id for i in items],
            [_json_text(i.outputs) for i in items],
            [_json_text(i.error) for i in items],
            [i.record_ignored for i in items],
            [_json_text(i.provider_state) for i in items],
            [i.next_action_at for i in items],
            [i.lease_owner for i in items],
        )
        by_ord = {row["ord"]: row for row in rows}
        return [
            ApplyResult(applied=by_ord[n]["applied"], event_id=by_ord[n]["event_id"])
            for n in range(1, len(items) + 1)
        ]

    async def create_job(
        self,
        request: JobCreate,
        *,
        idempotency_key: str | None,
        timeout_s: float = 3600.0,
        job_id: str | None = None,
    ) -> CreateResult:
        """Creates the job and its first event, or returns the job holding the same key.

        With batching, concurrent creations share one statement and one commit."""
        if self.batching:
            return await self._creations.submit(
                PendingCreation(request, idempotency_key, timeout_s, job_id or new_job_id())
            )
        fingerprint = request_hash(request)
        row = await self.db.fetchrow(
            "create_job",
            job_id or new_job_id(),
            request.provider,
            request.model,
            request.input,
            request.metadata,
            request.webhook_url,
            idempotency_key,
            fingerprint,
            {},
            timeout_s,
        )
        assert row is not None
        return CreateResult(
            job=job_from_row(row), created=row["created"], request_hash=row["request_hash"]
        )

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.db.fetchrow("get_job", job_id)
        return job_from_row(row) if row else None

    async def list_jobs(
        self, *, provider: str | None, status: str | None, limit: int, before_id: str | None
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None at the end)."""
        rows = await self.db.fetch("list_jobs", provider, status, before_id, limit + 1)
        jobs = [job_from_row(row) for row in rows[:limit]]
        next_cursor = jobs[-1].id if len(rows) > limit else None
        return jobs, next_cursor

    async def list_events(self, job_id: str) -> list[Event]:
        rows = await self.db.fetch("list_events", job_id)
        return [event_from_row(row) for row in rows]

    async def job_exists(self, job_id: str) -> bool:
        return bool(await self.db.fetchval("job_exists", job_id))

    async def apply_observation(
        self,
        job_id: str,
        status: JobStatus,
        *,
        source: EventSource,
        data: dict[str, Any] | None = None,
        provider_job_id: str | None = None,
        outputs: list[JobOutput] | None = None,
        error: JobError | None = None,
        record_ignored: bool = False,
        provider_state: dict[str, Any] | None = None,
        next_action_at: datetime | None = None,
        lease_owner: str | None = None,
    ) -> ApplyResult:
        """Records what a webhook, a poll, the API or the system saw of a job's status.

        Workers pass their `lease_owner` (released) and the job's next action; webhooks leave
        the schedule alone. With batching, it is committed in one statement with concurrent
        observations, and returns once that batch is committed.
        """
        pending = PendingObservation(
            job_id=job_id,
            status=status.value,
            source=source,
            data=data or {},
            provider_job_id=provider_job_id,
            outputs=[o.model_dump() for o in outputs] if outputs is not None else None,
            error=error.model_dump(mode="json") if error is not None else None,
            record_ignored=record_ignored,
            provider_state=provider_state,
            next_action_at=next_action_at,
            lease_owner=lease_owner,
        )
        if self.batching:
            return await self._observations.submit(pending)
        row = await self.db.fetchrow(
            "apply_observation",
            pending.job_id,
            pending.status,
            pending.source,
            pending.data,
            pending.provider_job_id,
            pending.outputs,
            pending.error,
            pending.record_ignored,
            pending.provider_state,
            pending.next_action_at,
            pending.lease_owner,
        )
        assert row is not None
        return ApplyResult(applied=row["applied"], event_id=row["event_id"])

    async def request_cancel(self, job_id: str) -> CancelResult:
        row = await self.db.fetchrow("request_cancel", job_id)
        assert row is not None
        job = job_from_row(row) if row["id"] is not None else None
        return CancelResult(outcome=row["outcome"], job=job)

    # --- what the workers and callback receivers need ---------------------------------------

    async def get_record(self, job_id: str) -> JobRecord | None:
        row = await self.db.fetchrow("get_job", job_id)
        return record_from_row(row) if row else None

    async def claim_due(self, *, owner: str, limit: int, lease_seconds: float) -> list[JobRecord]:
        rows = await self.db.fetch("claim_due_jobs", owner, limit, lease_seconds)
        return [record_from_row(row) for row in rows]

    async def completion_p95(self, provider: str, model: str) -> tuple[int, float | None]:
        """How many recent successes of this model there are, and their p95 duration (s)."""
        row = await self.db.fetchrow("completion_seconds_p95", provider, model)
        assert row is not None
        return int(row["samples"]), row["p95"]

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self.db.fetchval("next_due_at")
        return value

    async def _flush_begins(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """begin_submission for a batch, one statement per owner; outcomes in order."""
        outcomes: dict[int, str] = {}
        for owner in {owner for _, owner, _ in items}:
            positions = [n for n, item in enumerate(items) if item[1] == owner]
            rows = await self.db.fetch(
                "begin_submissions",
                [items[n][0] for n in positions],
                owner,
                [items[n][2] for n in positions],
            )
            by_ord = {row["ord"]: row["outcome"] for row in rows}
            for k, n in enumerate(positions, start=1):
                outcomes[n] = by_ord[k]
        return [outcomes[n] for n in range(len(items))]

    async def begin_submission(self, job_id: str, *, owner: str, token_hash: str) -> str:
        """Marks the submission started (committed before anything is sent); batched with
        concurrent begins of the same owner when batching is on."""
        if self.batching:
            return await self._begins.submit((job_id, owner, token_hash))
        row = await self.db.fetchrow("begin_submission", job_id, owner, token_hash)
        assert row is not None
        outcome: str = row["outcome"]
        return outcome

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
        return bool(
            await self.db.fetchval(
                "reschedule_job",
                job_id,
                owner,
                at,
                clear_submission,
                event_type,
                "system",
                data or {},
            )
        )

    async def record_submission_unknown(
        self, job_id: str, *, owner: str, next_action_at: datetime, data: dict[str, Any]
    ) -> bool:
        """Records once that the submission may or may not have created a job, and when to
        look again; releases the lease."""
        return bool(
            await self.db.fetchval("record_submission_unknown", job_id, owner, next_action_at, data)
        )

    async def resend_unsent_submission(
        self, job_id: str, *, owner: str, data: dict[str, Any]
    ) -> bool:
        """The provider holds no job from the started submission: due to be sent now."""
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
        """Binds the provider job found for the started submission, unless another of our jobs
        holds it; True when the job moved to submitted."""
        value = await self.db.fetchval(
            "bind_listed_submission", job_id, provider, provider_job_id, owner, next_action_at, data
        )
        return bool(value)

    async def bound_provider_job_ids(self, provider: str, provider_job_ids: list[str]) -> set[str]:
        """Those of `provider_job_ids` that are bound to one of our jobs."""
        if not provider_job_ids:
            return set()
        rows = await self.db.fetch("bound_provider_job_ids", provider, provider_job_ids)
        return {row["provider_job_id"] for row in rows}

    async def record_cancel_sent(
        self,
        job_id: str,
        *,
        owner: str,
        provider_state: dict[str, Any],
        next_action_at: datetime,
        data: dict[str, Any],
    ) -> bool:
        return bool(
            await self.db.fetchval(
                "record_cancel_sent", job_id, owner, provider_state, next_action_at, data
            )
        )

    async def record_event(
        self, job_id: str, *, type: str, source: EventSource, data: dict[str, Any]
    ) -> int | None:
        value: int | None = await self.db.fetchval("record_job_event", job_id, type, source, data)
        return value
