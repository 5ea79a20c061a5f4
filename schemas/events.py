"""The audit trail's event object (append-only; CONTRACT.md, Event object)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from schemas.common import Timestamp
from schemas.jobs import JobStatus

EventSource = Literal["api", "webhook", "poll", "system"]


class Event(BaseModel):
    """One entry of a job's history. `id` grows in commit order across all jobs."""

    id: int
    job_id: str
    seq: int
    type: str
    from_status: JobStatus | None
    to_status: JobStatus | None
    source: EventSource
    data: dict[str, Any]
    created_at: Timestamp


class EventList(BaseModel):
    events: list[Event]
