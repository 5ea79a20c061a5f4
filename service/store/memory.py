"""The JobStore in memory: the same contract as PostgreSQL's (tests/store runs one suite against
both), so that the runner's decisions can be unit-tested without a database. One process, no
durability; each method is atomic because nothing in it awaits. The status rule is the one in
sql/ (`job_transition_allowed`): ranks only rise, terminal statuses are final."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.events import Event, EventSource
from schemas.jobs import Job, JobAttempt, JobCreate, JobError, JobOutput, JobStatus
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

_RANK = {
    JobStatus.ACCEPTED: 0, JobStatus.SUBMITTED: 1, JobStatus.QUEUED: 2, JobStatus.RUNNING: 3,
    JobStatus.SUCCEEDED: 4, JobStatus.FAILED: 4, JobStatus.CANCELED: 4,
}  # fmt: skip


def transition_allowed(from_status: JobStatus, to_status: JobStatus) -> bool:
    return not from_status.is_terminal and _RANK[to_status] > _RANK[from_status]


def _contains(value: Any, needle: str) -> bool:
    """Whether a key or a scalar of `value`, at any depth, contains `needle` (lowercase): the
    search of list_jobs as sql/queries/jobs.sql does it (strings as their text, other scalars as
    JSON writes them, null never)."""
    if isinstance(value, dict):
        return any(needle in k.lower() or _contains(v, needle) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains(v, needle) for v in value)
    if value is None:
        return False
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return needle in text.lower()


@dataclass
class _Row:
    """One job, with the columns of the `jobs` table that the contract needs."""

    id: str
    request: JobCreate
    idempotency_key: str | None
    request_hash: str
    deadline_at: datetime
    created_at: datetime
    status: JobStatus = JobStatus.ACCEPTED
    provider_job_id: str | None = None
    outputs: list[JobOutput] | None = None
    error: JobError | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    provider_state: dict[str, Any] = field(default_factory=dict)
    callback_token_hash: str | None = None
    next_action_at: datetime | None = None
    lease_owner: str | None = None
    checks: int = 0
    submit_attempts: int = 0
    submit_started_at: datetime | None = None
    submit_unknown_at: datetime | None = None
    submitted_at: datetime | None = None
    cancel_sent_at: datetime | None = None
    last_due_at: datetime | None = None
    events: list[Event] = field(default_factory=list)
    # The current attempt (a direct job's only one): the provider and its model id.
    provider: str = ""
    model: str = ""
    # A routed job: the common model, the current attempt, the input translated for it, and
    # every attempt as the API shows it.
    route: str | None = None
    attempt: int | None = None
    provider_input: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    traceparent: str | None = None

    def job(self) -> Job:
        attempts = [JobAttempt.model_validate(a) for a in self.attempts] if self.route else None
        return Job(
            id=self.id, provider=self.provider, model=self.route or self.model,
            status=self.status, provider_job_id=self.provider_job_id, input=self.request.input,
            metadata=self.request.metadata, webhook_url=self.request.webhook_url,
            outputs=list(self.outputs or []), error=self.error,
            cancel_requested=self.cancel_requested_at is not None, created_at=self.created_at,
            updated_at=self.updated_at or self.created_at, completed_at=self.completed_at,
            attempts=attempts,
        )  # fmt: skip

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id, provider=self.provider, model=self.model, status=self.status,
            provider_job_id=self.provider_job_id,
            input=self.provider_input if self.provider_input is not None else self.request.input,
            provider_state=dict(self.provider_state),
            cancel_requested=self.cancel_requested_at is not None,
            submit_started_at=self.submit_started_at, submitted_at=self.submitted_at,
            attempts=self.checks, created_at=self.created_at,
            submit_attempts=self.submit_attempts, cancel_sent=self.cancel_sent_at is not None,
            callback_token_hash=self.callback_token_hash, deadline_at=self.deadline_at,
            due_at=self.last_due_at, submit_unknown_at=self.submit_unknown_at,
            route=self.route, attempt=self.attempt,
            route_input=self.request.input if self.route else None,
            traceparent=self.traceparent,
        )  # fmt: skip

    def current_attempt(self) -> dict[str, Any] | None:
        return self.attempts[-1] if self.route else None

    def follow(self) -> None:
        """The current attempt's row follows the job's (the trigger of sql/ 0007)."""
        current = self.current_attempt()
        if current is None or current["status"] in ("succeeded", "failed", "canceled"):
            return
        current["provider_job_id"] = self.provider_job_id
        if current["started_at"] is None and self.submit_started_at is not None:
            current["started_at"] = self.submit_started_at.isoformat()
        if self.status.is_terminal:
            current["status"] = self.status.value
            if self.status is JobStatus.FAILED and self.error is not None:
                current["error"] = self.error.model_dump(mode="json")
        elif self.provider_job_id is not None:
            current["status"] = "submitted"
        elif self.submit_started_at is not None:
            current["status"] = "started"


class MemoryJobStore:
    """The JobStore in one process's memory (see service.store.base for each method)."""

    def __init__(self, *, clock: Any = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._jobs: dict[str, _Row] = {}
        self._by_key: dict[str, str] = {}
        self._log: list[Event] = []

    def now(self) -> datetime:
        now: datetime = self._clock()
        return now

    async def close(self) -> None:
        return None

    def _append(
        self, row: _Row, type: str, source: EventSource, data: dict[str, Any] | None = None,
        *, from_status: JobStatus | None = None, to_status: JobStatus | None = None,
    ) -> Event:  # fmt: skip
        event = Event(
            id=len(self._log) + 1, job_id=row.id, seq=len(row.events) + 1, type=type,
            from_status=from_status, to_status=to_status, source=source, data=dict(data or {}),
            created_at=self.now(),
        )  # fmt: skip
        row.events.append(event)
        self._log.append(event)
        return event

    def _move(self, row: _Row, to: JobStatus, source: EventSource, data: dict[str, Any]) -> Event:
        event = self._append(
            row, "status_changed", source, data, from_status=row.status, to_status=to
        )
        row.status, row.updated_at = to, self.now()
        if to.is_terminal:
            row.completed_at, row.next_action_at = self.now(), None
        row.follow()
        return event

    def _leased(self, job_id: str, owner: str) -> _Row | None:
        row = self._jobs.get(job_id)
        return row if row is not None and row.lease_owner == owner else None

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
        if (held := self._held(idempotency_key)) is not None:
            return held
        now = self.now()
        row = _Row(
            id=job_id or new_job_id(), request=request, idempotency_key=idempotency_key,
            request_hash=request_hash(request), deadline_at=now + timedelta(seconds=timeout_s),
            created_at=now, next_action_at=now, provider=request.provider, model=request.model,
            traceparent=traceparent,
        )  # fmt: skip
        return self._created(row, {})

    def _held(self, idempotency_key: str | None) -> CreateResult | None:
        """The job that already holds this idempotency key, if any."""
        if idempotency_key is None or idempotency_key not in self._by_key:
            return None
        held = self._jobs[self._by_key[idempotency_key]]
        return CreateResult(held.job(), created=False, request_hash=held.request_hash)

    def _created(self, row: _Row, event_data: dict[str, Any]) -> CreateResult:
        self._jobs[row.id] = row
        if row.idempotency_key is not None:
            self._by_key[row.idempotency_key] = row.id
        self._append(row, "status_changed", "api", event_data, to_status=JobStatus.ACCEPTED)
        return CreateResult(row.job(), created=True, request_hash=row.request_hash)

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
        if (held := self._held(idempotency_key)) is not None:
            return held
        now = self.now()
        row = _Row(
            id=job_id or new_job_id(), request=request, idempotency_key=idempotency_key,
            request_hash=request_hash(request),
            deadline_at=now + timedelta(seconds=first.timeout_s), created_at=now,
            next_action_at=now, route=request.model, attempt=0, traceparent=traceparent,
        )  # fmt: skip
        self._start_attempt(row, first)
        return self._created(row, event_data)

    def _start_attempt(self, row: _Row, attempt: NextAttempt) -> None:
        row.attempt = (row.attempt or 0) + 1
        row.provider, row.model, row.provider_input = attempt.provider, attempt.model, attempt.input
        row.attempts.append({
            "provider": attempt.provider, "model": attempt.model, "provider_job_id": None,
            "status": "pending", "error": None, "started_at": None, "token_hash": None,
            "adjustments": attempt.adjustments,
        })  # fmt: skip

    async def get_job(self, job_id: str) -> Job | None:
        row = self._jobs.get(job_id)
        return row.job() if row else None

    async def list_jobs(
        self,
        *,
        provider: str | None,
        status: str | None,
        limit: int,
        before_id: str | None,
        search: str | None = None,
    ) -> tuple[list[Job], str | None]:
        rows = sorted(self._jobs.values(), key=lambda r: r.id, reverse=True)
        rows = [
            r for r in rows
            if (provider is None or r.provider == provider)
            and (status is None or r.status == status)
            and (before_id is None or r.id < before_id)
            and (search is None or r.id == search
                 or _contains(r.request.metadata, search.lower()))
        ]  # fmt: skip
        jobs = [r.job() for r in rows[:limit]]
        return jobs, jobs[-1].id if len(rows) > limit else None

    async def job_exists(self, job_id: str) -> bool:
        return job_id in self._jobs

    async def request_cancel(self, job_id: str) -> CancelResult:
        row = self._jobs.get(job_id)
        if row is None:
            return CancelResult("not_found", None)
        if row.status.is_terminal:
            return CancelResult("finished", row.job())
        if row.cancel_requested_at is not None:
            return CancelResult("already_requested", row.job())
        row.cancel_requested_at = row.next_action_at = self.now()
        self._append(row, "cancel_requested", "api")
        if row.record().awaits_submission and row.submit_started_at is None:
            self._move(row, JobStatus.CANCELED, "api", {"reason": "canceled before submission"})
            return CancelResult("canceled", row.job())
        return CancelResult("requested", row.job())

    # --- the log -----------------------------------------------------------------------------

    async def list_events(self, job_id: str) -> list[Event]:
        row = self._jobs.get(job_id)
        return list(row.events) if row else []

    async def events_after(self, after: int, *, job_id: str | None, limit: int) -> list[Event]:
        found = [e for e in self._log[after:] if job_id is None or e.job_id == job_id]
        return found[:limit]

    async def last_event_id(self) -> int:
        return len(self._log)

    # --- provider news -----------------------------------------------------------------------

    async def lookup(self, job_id: str) -> JobRecord | None:
        row = self._jobs.get(job_id)
        return row.record() if row else None

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
        status = observation.status
        assert status is not None, "an observation without a status changes nothing"
        row = self._jobs.get(job_id)
        if row is None:
            return ApplyResult(applied=False, event_id=None)
        applied = transition_allowed(row.status, status)
        if row.provider_job_id is None and observation.provider_job_id is not None:
            row.provider_job_id = observation.provider_job_id
        if observation.provider_job_id is not None and row.submitted_at is None:
            row.submitted_at = self.now()
        row.follow()
        row.provider_state = {**row.provider_state, **(provider_state or {})}
        if schedule is not None and schedule.next_action_at is not None:
            row.next_action_at = schedule.next_action_at
        if schedule is not None and row.lease_owner == schedule.owner:
            row.lease_owner = None
        event: Event | None = None
        if applied:
            row.outputs = observation.outputs if observation.outputs is not None else row.outputs
            row.error = observation.error or row.error
            event = self._move(row, status, source, observation.data)
        elif record_ignored:
            reason = "duplicate" if status == row.status else "stale"
            data = {**observation.data, "observed_status": status.value, "reason": reason}
            event = self._append(row, "observation_ignored", source, data)
        if row.status.is_terminal:
            row.next_action_at = None
        return ApplyResult(applied=applied, event_id=event.id if event else None)

    # --- the workers -------------------------------------------------------------------------

    async def claim_due(self, *, owner: str, limit: int, lease_seconds: float) -> list[JobRecord]:
        now = self.now()
        due = sorted(
            (r for r in self._jobs.values() if r.next_action_at and r.next_action_at <= now),
            key=lambda r: r.next_action_at or now,
        )[:limit]
        for row in due:
            row.lease_owner, row.last_due_at = owner, row.next_action_at
            row.next_action_at = now + timedelta(seconds=lease_seconds)
            row.checks += 1
        return [row.record() for row in due]

    async def next_due_at(self) -> datetime | None:
        times = [r.next_action_at for r in self._jobs.values() if r.next_action_at is not None]
        return min(times, default=None)

    async def completion_times(self, provider: str, model: str) -> CompletionTimes:
        since = self.now() - timedelta(days=1)
        durations = sorted(
            (r.completed_at - r.submitted_at).total_seconds()
            for r in self._jobs.values()
            if r.request.provider == provider and r.request.model == model
            and r.status is JobStatus.SUCCEEDED and r.submitted_at and r.completed_at
            and r.completed_at > since
        )  # fmt: skip
        return CompletionTimes(
            len(durations), _percentile(durations, 0.10), _percentile(durations, 0.95)
        )

    async def begin_submission(
        self, job_id: str, *, owner: str, token_hash: str, request: dict[str, Any]
    ) -> str:
        row = self._leased(job_id, owner)
        if row is None or not row.record().awaits_submission or row.submit_started_at:
            return "skip"
        if row.cancel_requested_at is not None:
            self._move(row, JobStatus.CANCELED, "system", {"reason": "canceled before submission"})
            row.lease_owner = None
            return "canceled"
        current = row.current_attempt()
        if current is not None and row.submit_attempts == 0:
            self._append(row, "attempt_started", "system", {
                "attempt": row.attempt, "provider": row.provider, "model": row.model,
                "request": request, "adjustments": current["adjustments"],
            })  # fmt: skip
        row.submit_started_at, row.callback_token_hash = self.now(), token_hash
        if current is not None:
            current["token_hash"] = token_hash
        row.submit_attempts += 1
        self._append(row, "submission_started", "system", {"attempt": row.submit_attempts})
        row.follow()
        return "go"

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
        row = self._jobs.get(job_id)
        if row is None or row.route is None:
            return "not_routed"
        current = row.current_attempt()
        if row.status.is_terminal or row.attempt != attempt or current is None:
            return "stale"
        error_json = error.model_dump(mode="json")
        current.update(status="failed", error=error_json)
        self._append(row, "attempt_failed", source, {
            **data, "attempt": attempt, "provider": row.provider, "model": row.model,
            "provider_job_id": row.provider_job_id, "error": error_json,
        })  # fmt: skip
        if next_attempt is None:
            row.error, row.lease_owner = error, None
            self._move(row, JobStatus.FAILED, source, {"code": error.code, "attempts": attempt})
            return "failed"
        self._start_attempt(row, next_attempt)
        now = self.now()
        row.provider_job_id, row.provider_state, row.callback_token_hash = None, {}, None
        row.submit_started_at = row.submitted_at = row.submit_unknown_at = None
        row.cancel_sent_at, row.submit_attempts, row.checks = None, 0, 0
        row.deadline_at = now + timedelta(seconds=next_attempt.timeout_s)
        row.next_action_at, row.lease_owner, row.updated_at = now, None, now
        return "next"

    async def superseded_attempt(
        self, job_id: str, *, provider: str, token_hash: str
    ) -> int | None:
        row = self._jobs.get(job_id)
        if row is None or row.route is None:
            return None
        for n, attempt in enumerate(row.attempts[:-1], start=1):
            if attempt["provider"] == provider and attempt["token_hash"] == token_hash:
                return n
        return None

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
        row = self._leased(job_id, owner)
        if row is None or row.status.is_terminal:
            return False
        row.next_action_at, row.lease_owner = at, None
        if clear_submission:
            row.submit_started_at = None
        if event_type is not None:
            self._append(row, event_type, "system", data)
        return True

    async def record_cancel_sent(
        self,
        job_id: str,
        *,
        owner: str,
        provider_state: dict[str, Any],
        next_action_at: datetime,
        data: dict[str, Any],
    ) -> bool:
        row = self._jobs.get(job_id)
        if row is None:
            return False
        row.cancel_sent_at = self.now()
        row.next_action_at = None if row.status.is_terminal else next_action_at
        row.provider_state = {**row.provider_state, **provider_state}
        if row.lease_owner == owner:
            row.lease_owner = None
        self._append(row, "cancel_sent", "system", data)
        return True

    async def record_event(
        self, job_id: str, *, type: str, source: EventSource, data: dict[str, Any]
    ) -> int | None:
        row = self._jobs.get(job_id)
        return self._append(row, type, source, data).id if row else None

    async def record_submission_unknown(
        self, job_id: str, *, owner: str, next_action_at: datetime, data: dict[str, Any]
    ) -> bool:
        row = self._leased(job_id, owner)
        if (row is None or row.status is not JobStatus.ACCEPTED or row.submit_started_at is None
                or row.submit_unknown_at is not None):  # fmt: skip
            return False
        row.submit_unknown_at, row.next_action_at, row.lease_owner = (
            self.now(),
            next_action_at,
            None,
        )
        self._append(row, "submission_outcome_unknown", "system", data)
        return True

    async def resend_unsent_submission(
        self, job_id: str, *, owner: str, data: dict[str, Any]
    ) -> bool:
        row = self._leased(job_id, owner)
        if row is None or row.status is not JobStatus.ACCEPTED or row.submit_started_at is None:
            return False
        row.submit_started_at = row.submit_unknown_at = row.lease_owner = None
        row.next_action_at = self.now()
        self._append(row, "submission_lookup", "system", data)
        return True

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
        if await self.bound_provider_job_ids(provider, [provider_job_id]):
            return False
        observed = Observation(JobStatus.SUBMITTED, provider_job_id=provider_job_id, data=data)
        result = await self.apply_observation(
            job_id, observed, source="system", record_ignored=True,
            schedule=Schedule(owner=owner, next_action_at=next_action_at),
        )  # fmt: skip
        return result.applied

    async def bound_provider_job_ids(self, provider: str, provider_job_ids: list[str]) -> set[str]:
        wanted = set(provider_job_ids)
        return {
            r.provider_job_id for r in self._jobs.values()
            if r.request.provider == provider and r.provider_job_id in wanted
        }  # fmt: skip


def _percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not values:
        return None
    position = q * (len(values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)
