"""The one small interface every provider adapter implements, and what crosses it.

Adapters speak HTTP to one provider and nothing else: they take a `JobRecord`, return
`Submission`s and `Observation`s in the contract's vocabulary, and raise only the
`ProviderError` family below (foreign exceptions are translated where they are raised):

    ProviderError
    ├── ProviderUnreachable     the request was certainly not sent: safe to send again
    ├── ProviderRateLimited     429: not accepted; send again after retry_after
    ├── ProviderRejected        4xx: final, the provider's detail is kept
    ├── ProviderServerError     5xx: whether the job exists is up to the provider (see policy)
    ├── OutcomeUnknown          sent, but no answer: the provider may have created the job
    └── ProviderProtocolError   an answer that does not match the provider's documented shape
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas.jobs import JobError, JobOutput, JobStatus


class ProviderError(Exception):
    """Base of the errors adapters raise."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ProviderUnreachable(ProviderError):
    pass


class ProviderRateLimited(ProviderError):
    def __init__(self, message: str, *, retry_after: float | None, detail: Any = None) -> None:
        super().__init__(message, status=429, detail=detail)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    pass


class ProviderServerError(ProviderError):
    pass


class OutcomeUnknown(ProviderError):
    pass


class ProviderProtocolError(ProviderError):
    pass


class InvalidCallback(Exception):
    """A callback that must be refused with 401 (bad signature, stale timestamp, unknown key)."""


@dataclass(frozen=True)
class JobRecord:
    """What an adapter needs to know of a job (a `jobs` row, internal fields included)."""

    id: str
    provider: str
    model: str
    status: JobStatus
    provider_job_id: str | None
    input: dict[str, Any]
    provider_state: dict[str, Any]
    cancel_requested: bool
    submit_started_at: datetime | None
    submitted_at: datetime | None
    attempts: int
    created_at: datetime
    submit_attempts: int = 0
    cancel_sent: bool = False
    callback_token_hash: str | None = None
    deadline_at: datetime | None = None
    due_at: datetime | None = None  # when the job was due at the claim that produced this record
    submit_unknown_at: datetime | None = None  # when its submission's outcome became unknown


@dataclass(frozen=True)
class Submission:
    """The provider acknowledged a job."""

    provider_job_id: str
    provider_status: str | None
    provider_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What the provider says of a job now. `status` is None when the provider's status has no
    place in the contract's vocabulary (it is still recorded)."""

    status: JobStatus | None
    provider_status: str | None = None  # None: news of the service itself (a failed submission)
    provider_job_id: str | None = None
    outputs: list[JobOutput] | None = None
    error: JobError | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedJob:
    """A job the provider lists for this account: a candidate for a submission whose outcome is
    unknown. `matches_request` is True or False when the provider echoes the job's input and it
    does or does not equal the request; None when the provider shows no input."""

    provider_job_id: str
    created_at: datetime | None
    terminal: bool
    completed_at: datetime | None = None
    matches_request: bool | None = None


@dataclass(frozen=True)
class CancelOutcome:
    """The provider's answer to a cancel request, recorded as is."""

    accepted: bool
    provider_answer: str


class ProviderAdapter(Protocol):
    """One provider's API behind the interface the workers and callback receivers use."""

    name: str

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission: ...

    async def fetch_status(self, job: JobRecord) -> Observation: ...

    async def cancel(self, job: JobRecord) -> CancelOutcome: ...

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> list[ListedJob] | None:
        """The account's jobs created in [since, until] (from the provider's list endpoint), to
        settle a submission whose outcome is unknown; None when the provider offers no list."""
        ...

    def server_error_is_retryable(self, status: int) -> bool:
        """Whether a 5xx answer to a submit means the job was certainly not created."""
        ...

    async def aclose(self) -> None: ...
