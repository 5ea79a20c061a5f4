"""The store: the one boundary to what the service keeps (see service.store.base)."""

from service.store.base import (
    ApplyResult,
    CancelResult,
    CompletionTimes,
    CreateResult,
    JobStore,
    Schedule,
    new_job_id,
    request_hash,
)

__all__ = [
    "ApplyResult",
    "CancelResult",
    "CompletionTimes",
    "CreateResult",
    "JobStore",
    "Schedule",
    "new_job_id",
    "request_hash",
]
