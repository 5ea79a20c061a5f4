"""Job request and job object of the jobs API (CONTRACT.md, Jobs API)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.common import Timestamp

METADATA_MAX_BYTES = 16 * 1024
#: 1 to 255 printable ASCII characters, neither first nor last a space (HTTP strips those from a
#: header value, so no client could send them).
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")

Provider = Literal["krea", "fal", "scenario"]
PROVIDERS: tuple[Provider, ...] = ("krea", "fal", "scenario")
#: `provider` of a request for a routed model (CONTRACT.md, Routing across providers).
AUTO = "auto"


class JobStatus(StrEnum):
    """The one status vocabulary for all providers. The transition rules live in the database
    (sql/migrations/0001_baseline.sql, job_transition_allowed), not here."""

    ACCEPTED = "accepted"
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


#: An absolute http(s) URL with a host and no credentials (no `@` before the path), as the
#: OpenAPI document states it: the request is valid exactly when this matches.
WEBHOOK_URL_PATTERN = (
    r"^https?://[A-Za-z0-9._~%!$&'()*+,;=-][A-Za-z0-9._~%!$&'()*+,;=:-]*(?:[/?#][^\s\x00]*)?$"
)
_WEBHOOK_URL = re.compile(WEBHOOK_URL_PATTERN)


def _check_webhook_url(value: str) -> str:
    if not _WEBHOOK_URL.match(value):
        raise ValueError("must be an absolute http or https URL, without credentials")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    return value


def _check_metadata_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(orjson.dumps(value)) > METADATA_MAX_BYTES:
        raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as JSON")
    return value


WebhookUrl = Annotated[
    str,
    Field(max_length=2048, json_schema_extra={"pattern": WEBHOOK_URL_PATTERN}),
    AfterValidator(_check_webhook_url),
]
Metadata = Annotated[dict[str, Any] | None, AfterValidator(_check_metadata_size)]


class JobCreate(BaseModel):
    """The envelope of `POST /v1/jobs`. `input` is checked against the model's own schema
    afterwards; here it only has to be an object."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["krea", "fal", "scenario", "auto"] = Field(
        description="a provider, or `auto` for a model served by several (see `ROUTES`)"
    )
    model: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
    webhook_url: WebhookUrl | None = None
    metadata: Metadata = None


class JobOutput(BaseModel):
    """One generated file, normalised across providers; `sha256`, `bytes` and `archived_url`
    are filled once the service has archived it (CONTRACT.md, Archived outputs)."""

    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    bytes: int | None = None
    archived_url: str | None = None


class JobError(BaseModel):
    """Why a job failed: our code and message, and the provider's own detail when it gave one."""

    code: str
    message: str
    provider_detail: Any = None


class JobAttempt(BaseModel):
    """One provider tried for a routed job, oldest first. `status`: `pending` (chosen, nothing
    sent yet), `started` (submission sent), `submitted` (the provider gave its job id), then
    `succeeded`, `failed` (its error says why) or `canceled`."""

    provider: Provider
    model: str
    provider_job_id: str | None
    status: Literal["pending", "started", "submitted", "succeeded", "failed", "canceled"]
    error: JobError | None
    started_at: Timestamp | None


class Job(BaseModel):
    """The job object returned by every jobs endpoint. A routed job's `model` is the common
    model asked for, its `provider` and `provider_job_id` are its latest attempt's, and it has
    `attempts`; a direct job has none (the member is left out)."""

    id: str
    provider: Provider
    model: str
    status: JobStatus
    provider_job_id: str | None
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    webhook_url: str | None
    outputs: list[JobOutput]
    error: JobError | None
    cancel_requested: bool
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None
    attempts: list[JobAttempt] | None = None

    def body(self) -> dict[str, Any]:
        """The job as the API returns it (no `attempts` member for a direct job)."""
        return self.model_dump(mode="json", exclude={"attempts"} if self.attempts is None else None)


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None
