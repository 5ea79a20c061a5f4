"""The one small interface every provider adapter implements, and what crosses it.

An adapter owns the whole boundary with one provider: it speaks HTTP to it (submit, status,
cancel, list), reads the callbacks it sends (signature checks included), keeps its own typed
state of a job (`schemas.providers.ProviderState`, stored as JSON), and decides how a failed
submit is handled (`SubmitPolicy`). It takes a `JobRecord` and returns `Submission`s and
`Observation`s in the contract's vocabulary. Foreign exceptions (httpx, pydantic, cryptography,
ValueError) are translated where they are raised, into these and nothing else:

    ProviderError               calling the provider failed
    ├── ProviderUnreachable     the request was certainly not sent: safe to send again
    ├── ProviderRateLimited     429: not accepted; send again after retry_after
    ├── ProviderRejected        4xx: final, the provider's detail is kept
    ├── ProviderServerError     5xx: whether the job exists is up to the provider (see policy)
    ├── OutcomeUnknown          sent, but no answer: the provider may have created the job
    └── ProviderProtocolError   an answer (or a stored state) not of the documented shape

    CallbackError               a callback that is not recorded
    ├── InvalidCallback         refused (401): bad signature, another job's id, no callbacks
    │   └── BadSignature        ... because its signature does not verify
    └── MalformedCallback       authentic but unreadable (400)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.jobs import JobError, JobOutput, JobStatus
from schemas.providers import ProviderState

S = TypeVar("S", bound=ProviderState)
B = TypeVar("B", bound=BaseModel)


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


class CallbackError(Exception):
    """Base of the errors `parse_callback` raises; `code` is the one the caller is answered."""

    code = "invalid_callback"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class InvalidCallback(CallbackError):
    """A callback that must be refused with 401 and not recorded."""


class BadSignature(InvalidCallback):
    """Signature missing, stale, malformed or not verifying under the provider's keys."""

    code = "invalid_signature"


class MalformedCallback(CallbackError):
    """An authentic callback whose body does not have the provider's documented shape (400)."""


#: What the providers put in a job's failure when their content checker refused it (fal's error
#: type `content_policy_violation`; Krea's and Scenario's failure text): the content's fault,
#: which another provider would refuse too (CONTRACT.md, Routing: never retried elsewhere).
_CONTENT_REFUSAL_MARKERS = ("content_policy_violation", "content policy", "nsfw", "safety filter")


def failure(message: str, detail: Any) -> JobError:
    """A provider-reported job failure: `content_refused` when the provider's detail says its
    content checker refused the job, `provider_failed` otherwise."""
    text = orjson.dumps(detail, default=str).decode().lower() if detail is not None else ""
    refused = any(marker in text for marker in _CONTENT_REFUSAL_MARKERS)
    code = "content_refused" if refused else "provider_failed"
    return JobError(code=code, message=message, provider_detail=detail)


#: What a provider's U+0000 becomes: PostgreSQL's text and jsonb cannot store that character,
#: and a provider's answer or callback holding one must still be recorded, not refused forever.
NUL_REPLACEMENT = "\ufffd"


def without_nul(value: Any) -> Any:
    """`value` (JSON as read) with every U+0000 in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def validated(
    model: type[B], value: bytes | dict[str, Any], *, fail: Callable[[ValidationError], Exception]
) -> B:
    """`value` (JSON text, or an object already read) as `model`; a ValidationError (invalid
    JSON included) raised as `fail(error)`, so that no pydantic error crosses the boundary.
    A U+0000 in the provider's JSON is read as U+FFFD (NUL_REPLACEMENT)."""
    try:
        if isinstance(value, bytes):
            if b"\\u0000" not in value:
                return model.model_validate_json(value)
            try:
                read = orjson.loads(value)
            except orjson.JSONDecodeError:
                return model.model_validate_json(value)  # raises, naming the JSON error
            return model.model_validate(without_nul(read))
        return model.model_validate(value)
    except ValidationError as exc:
        raise fail(exc) from exc


def callback_payload(model: type[B], body: bytes, *, what: str) -> B:
    """A callback body as `model`, or MalformedCallback naming the fields at fault."""

    def malformed(exc: ValidationError) -> MalformedCallback:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        details = [{"loc": list(err["loc"]), "msg": err["msg"]} for err in errors]
        return MalformedCallback(f"callback body is not {what}", details=details)

    return validated(model, body, fail=malformed)


@dataclass(frozen=True)
class JobRecord:
    """What an adapter needs to know of a job (a `jobs` row, internal fields included)."""

    id: str
    provider: str
    model: str
    status: JobStatus
    provider_job_id: str | None
    input: dict[str, Any]
    provider_state: dict[str, Any]  # stored JSON: its adapter reads it with `read_state`
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
    route: str | None = None  # a routed job's common model (CONTRACT.md, Routing)
    attempt: int | None = None  # a routed job's current attempt (1, 2, ...)
    route_input: dict[str, Any] | None = None  # a routed job's common input, as the client sent it
    traceparent: str | None = None  # the trace its work joins (W3C; None: not traced)

    @property
    def awaits_submission(self) -> bool:
        """Nothing of the current attempt has reached the provider's answer yet: a new job, or
        a routed job's later attempt (whose status an earlier attempt may have moved on)."""
        if self.status is JobStatus.ACCEPTED:
            return True
        return (
            (self.attempt or 1) > 1 and self.provider_job_id is None and not self.status.is_terminal
        )


def read_state(model: type[S], job: JobRecord) -> S:
    """The job's stored provider state as its adapter's model, or ProviderProtocolError."""
    message = f"{job.provider} job {job.id}: stored provider state has not the expected shape"
    return validated(
        model, job.provider_state,
        fail=lambda _: ProviderProtocolError(message, detail=job.provider_state),
    )  # fmt: skip


def check_provider_job(job: JobRecord, named: str) -> None:
    """A callback must name the job's provider job once that is known. Before (the callback
    came before the submit answer was recorded) the token in its URL is what binds it."""
    if job.provider_job_id is not None and named != job.provider_job_id:
        raise InvalidCallback("callback names another provider job")


def state_json(state: ProviderState | None) -> dict[str, Any]:
    """A state update as the JSON merged into `jobs.provider_state` ({} changes nothing)."""
    return state.to_json() if state is not None else {}


@dataclass(frozen=True)
class Submission:
    """The provider acknowledged a job; `provider_state` is what its adapter keeps of it."""

    provider_job_id: str
    provider_status: str | None
    provider_state: ProviderState | None = None


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
    """The provider's answer to a cancel request, recorded as is, and the state update the
    adapter wants recorded with it (None: nothing to record)."""

    accepted: bool
    provider_answer: str
    state: ProviderState | None = None


SubmitVerdict = Literal["retry", "unknown", "final"]


@dataclass(frozen=True)
class SubmitPolicy:
    """How a failed submit is handled, one per provider: `retry` (the job was certainly not
    created: send again, after retry_after when given), `unknown` (it may exist: settle by asking
    the provider, never send blindly), or `final` (refused: the job fails)."""

    #: 5xx answers after which the provider certainly did not create the job.
    retryable_server_errors: frozenset[int] = frozenset()

    def classify(self, exc: ProviderError) -> SubmitVerdict:
        if isinstance(exc, ProviderUnreachable | ProviderRateLimited):
            return "retry"
        if isinstance(exc, ProviderServerError):
            return "retry" if exc.status in self.retryable_server_errors else "unknown"
        if isinstance(exc, ProviderRejected):
            return "final"
        return "unknown"  # OutcomeUnknown, ProviderProtocolError: the job may exist


class ProviderAdapter(Protocol):
    """One provider's API behind the interface the workers and callback receivers use."""

    name: str
    submit_policy: SubmitPolicy

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission: ...

    async def fetch_status(self, job: JobRecord) -> Observation: ...

    async def parse_callback(
        self, job: JobRecord, headers: Mapping[str, str], body: bytes
    ) -> Observation:
        """A callback for `job` (its token already checked) as an observation; raises
        InvalidCallback (refused) or MalformedCallback, and nothing else of the callback's."""
        ...

    async def cancel(self, job: JobRecord) -> CancelOutcome: ...

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> list[ListedJob] | None:
        """The account's jobs created in [since, until] (from the provider's list endpoint), to
        settle a submission whose outcome is unknown; None when the provider offers no list."""
        ...

    async def aclose(self) -> None: ...
