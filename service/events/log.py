"""Reading the event log in commit order, page by page: the one reader that the live hub and
each stream's replay share."""

from __future__ import annotations

from collections.abc import AsyncIterator

from schemas.events import Event
from service.store import JobStore

PAGE = 500


async def pages_after(
    store: JobStore, after: int, *, job_id: str | None = None, page: int = PAGE
) -> AsyncIterator[list[Event]]:
    """Every event after `after` (of one job, or of all), in pages, until the log's end."""
    while True:
        events = await store.events_after(after, job_id=job_id, limit=page)
        if events:
            yield events
            after = events[-1].id
        if len(events) < page:
            return
