"""Reading a provider's job list to settle a submission whose outcome is unknown.

Krea and Scenario list an account's jobs newest first; the adapters page back through that list
until they pass the start of the window in which the unknown submission could have created a
job, and hand the jobs of the window to the runner, which decides (service.workers.unknown).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from service.providers.base import ListedJob, ProviderProtocolError

#: One page of a provider's list, from a cursor (None: the newest): its jobs, the next cursor.
PageReader = Callable[[str | None], Awaitable[tuple[list[ListedJob], str | None]]]

#: Pages read at most before giving up on reaching the start of the window (the runner then
#: waits and looks again rather than deciding on a partial list).
MAX_LIST_PAGES = 20
LIST_PAGE_SIZE = 100


def provider_time(value: str | None) -> datetime | None:
    """An ISO 8601 time as providers send it (`2025-01-15T10:30:00.000Z`); None if absent."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProviderProtocolError(f"not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def echo_matches(request: dict[str, Any], echoed: dict[str, Any] | None) -> bool | None:
    """Whether the input a provider echoes back is the request: every parameter sent appears
    with the same value (the provider may add its defaults). None when nothing is echoed."""
    if echoed is None:
        return None
    return all(key in echoed and echoed[key] == value for key, value in request.items())


async def jobs_in_window(
    read_page: PageReader, *, since: datetime, until: datetime, what: str
) -> list[ListedJob]:
    """The listed jobs created in [since, until], paging back (newest first) until a job older
    than `since`; a job whose creation time is not shown is kept (it may be the one)."""
    listed: list[ListedJob] = []
    cursor = None
    for _ in range(MAX_LIST_PAGES):
        page, cursor = await read_page(cursor)
        for item in page:
            created = item.created_at
            if created is not None and created < since:
                return listed
            if created is None or created <= until:
                listed.append(item)
        if cursor is None:
            return listed
    raise ProviderProtocolError(
        f"{what}: the window's start was not reached within {MAX_LIST_PAGES} pages"
    )
