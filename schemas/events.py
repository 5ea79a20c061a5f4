"""The audit trail's event object (append-only; CONTRACT.md, Event object and Audit chain)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel

from schemas.common import Timestamp
from schemas.jobs import JobStatus

EventSource = Literal["api", "webhook", "poll", "system"]

# I-JSON (RFC 7493) numbers: integers beyond +-(2**53 - 1) are not exact in the IEEE 754 double
# that RFC 8785 (the audit chain's canonical form) and most JSON readers use.
SAFE_INTEGER = 2**53 - 1


def i_json(value: Any) -> Any:
    """`value` with every integer outside the safe range written as its decimal string, so the
    event as the API returns it can be canonicalized (RFC 8785) and hashed by anyone. Provider
    details and seeds are the only places such integers come from."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -SAFE_INTEGER <= value <= SAFE_INTEGER else str(value)
    if isinstance(value, dict):
        return {key: i_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [i_json(item) for item in value]
    return value


Hash = Annotated[str, "lowercase hex SHA-256"]


class Event(BaseModel):
    """One entry of a job's history. `id` grows in commit order across all jobs. `hash` chains
    the event to `prev_hash`, its job's previous event (both null until sealed, a moment after
    the commit)."""

    id: int
    job_id: str
    seq: int
    type: str
    from_status: JobStatus | None
    to_status: JobStatus | None
    source: EventSource
    data: Annotated[dict[str, Any], AfterValidator(i_json)]
    created_at: Timestamp
    prev_hash: Hash | None = None
    hash: Hash | None = None


class EventList(BaseModel):
    events: list[Event]
