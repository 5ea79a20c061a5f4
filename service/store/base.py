"""What the service keeps of its jobs, as one interface (`JobStore`) with two implementations:
PostgreSQL (`service.store.postgres`, the real one) and memory (`service.store.memory`, for unit
tests of the runner's decisions without a database). The same contract tests run against both
(tests/store).

Every state change is one atomic step: the job, its event with the next per-job `seq`, and the
forward-only rule (a job's status only moves forward; duplicate or stale news never moves it,
and may be recorded as `observation_ignored`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from schemas.events import Event, EventSource
from schemas.jobs import Job, JobCreate, JobError
from service.providers.base import JobRecord, Observation

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


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
class CompletionTimes:
    """A model's recent successes: how many, and their submission-to-completion seconds at
    the 10th and 95th percentiles (None without any)."""

    samples: int
    p10_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class Schedule:
    """A worker's part in a change: its lease on the job is released, and the job's next
    action is set (None keeps it; a terminal status clears it)."""

    owner: str
    next_action_at: datetime | None = None


@dataclass(frozen=True)
class NextAttempt:
    """A routed job's next attempt: the provider, its model id, the common input translated
    for it (and what could not be honoured exactly), and how long it may take."""

    provider: str
    model: str
    input: dict[str, Any]
    adjustments: dict[str, Any]
    timeout_s: float


class JobStore(Protocol):
    """Reads and state changes of jobs and their history."""

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
        """Creates the job and its first event (due at once), or returns the job that holds
        the same idempotency key. `traceparent` (W3C) is the trace the job's later work joins
        (service.tracing)."""  # fmt: skip

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
        """A routed job (`request.model` the common model, `request.input` the common input)
        with its first attempt; or the job that holds the same idempotency key."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self,
        *,
        provider: str | None,
        status: str | None,
        limit: int,
        before_id: str | None,
        search: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None at the end).

        `search` keeps the job whose id it is, and the jobs whose metadata has a key or a
        scalar value, at any depth, that contains it case-insensitively (a string as its text,
        a number or boolean as JSON writes it; never the JSON punctuation between them)."""

    async def job_exists(self, job_id: str) -> bool: ...

    async def request_cancel(self, job_id: str) -> CancelResult:
        """Canceled at once before any submission started; otherwise recorded and made due,
        so that a worker sends the cancel to the provider."""

    # --- the log -----------------------------------------------------------------------------
    async def list_events(self, job_id: str) -> list[Event]: ...

    async def events_after(self, after: int, *, job_id: str | None, limit: int) -> list[Event]:
        """Up to `limit` events with ids above `after`, in id order (ids grow in commit order,
        so a reader resuming after an id misses nothing committed later)."""

    async def last_event_id(self) -> int: ...

    # --- provider news -----------------------------------------------------------------------
    async def lookup(self, job_id: str) -> JobRecord | None:
        """The job's internal record (callback receivers and tests)."""

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
        """Records what a webhook, a poll, the API or the system saw of the job's status. A
        provider job id is bound even by news that does not move the status."""  # fmt: skip

    # --- the workers -------------------------------------------------------------------------
    async def claim_due(self, *, owner: str, limit: int, lease_seconds: float) -> list[JobRecord]:
        """Up to `limit` due jobs, leased to `owner` for `lease_seconds` (their next action is
        pushed that far ahead), never to two owners at once."""

    async def next_due_at(self) -> datetime | None: ...

    async def completion_times(self, provider: str, model: str) -> CompletionTimes:
        """How many successes of the model the last day saw, and the p10 and p95 of their
        submission to completion times."""

    async def begin_submission(
        self, job_id: str, *, owner: str, token_hash: str, request: dict[str, Any]
    ) -> str:
        """Marks the submission started (committed before anything is sent): 'go', 'canceled'
        (a cancel came first) or 'skip' (not this owner's, or not to be submitted). The first
        send of a routed job's attempt also records `attempt_started` with `request`."""

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
        """Ends a routed job's current attempt `attempt` as failed (`attempt_failed`), then
        starts `next_attempt` ('next') or, with none, fails the job with `error` ('failed').
        News of an attempt that is no longer current changes nothing ('stale')."""

    async def superseded_attempt(
        self, job_id: str, *, provider: str, token_hash: str
    ) -> int | None:
        """The earlier attempt of a routed job that a callback's token belongs to, if any."""

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
        """Gives the job back to the schedule (lease released), optionally clearing a
        submission that certainly did not leave, and recording why."""  # fmt: skip

    async def record_cancel_sent(
        self,
        job_id: str,
        *,
        owner: str,
        provider_state: dict[str, Any],
        next_action_at: datetime,
        data: dict[str, Any],
    ) -> bool:
        """Records the cancel sent to the provider, even if the job ended meanwhile (then it
        gets no next action)."""  # fmt: skip

    async def record_event(
        self, job_id: str, *, type: str, source: EventSource, data: dict[str, Any]
    ) -> int | None:
        """An event that records a fact without changing the status."""

    async def record_submission_unknown(
        self, job_id: str, *, owner: str, next_action_at: datetime, data: dict[str, Any]
    ) -> bool:
        """Once per submission: its outcome is unknown; when to look again."""

    async def resend_unsent_submission(
        self, job_id: str, *, owner: str, data: dict[str, Any]
    ) -> bool:
        """The provider holds no job from the started submission: due to be sent now."""

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
        """Binds the provider job found for the started submission (-> submitted), unless
        another of our jobs holds it."""  # fmt: skip

    async def bound_provider_job_ids(self, provider: str, provider_job_ids: list[str]) -> set[str]:
        """Those of `provider_job_ids` that are bound to one of our jobs."""

    async def close(self) -> None: ...
