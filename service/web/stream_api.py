"""`GET /v1/events/stream`: the audit trail as server-sent events, live.

Each message is one event: `id:` is the event's id (grows in commit order), `data:` its JSON.
A client resumes after the `Last-Event-ID` header (or `?after=`) with no gap and no repeat: the
subscription is registered first, the log is replayed from the resume point, then live events
follow, skipping any id already sent. Without a resume point, a stream of one job
(`?job_id=`) starts with the job's whole history, and a stream of every job starts live.
Heartbeat comments keep idle connections open through proxies; control lines (`retry:`,
comments) carry no `id:`.
"""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web

from schemas.events import Event
from service.errors import NotFound, ValidationFailed
from service.events.hub import EventHub, Subscription
from service.events.log import pages_after
from service.store import JobStore
from service.web.jobs_api import JOB_ID_PATTERN

MAX_EVENT_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def format_event(event: Event) -> bytes:
    data = orjson.dumps(event.model_dump(mode="json"))
    return b"id: %d\ndata: %s\n\n" % (event.id, data)


def _resume_point(request: web.Request) -> int | None:
    """The event id to resume after: `Last-Event-ID`, else `?after=`; each checked when given
    (ASCII digits, within a bigint), so that an invalid one is never silently ignored."""
    points = []
    for loc, name, raw in (
        ("header", "Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("query", "after", request.query.get("after")),
    ):
        if raw is None:
            continue
        value = int(raw) if _DIGITS.fullmatch(raw) else -1
        if not 0 <= value <= MAX_EVENT_ID:
            raise ValidationFailed(
                "invalid resume point",
                details=[
                    {"loc": [loc, name], "msg": "must be an event id (a non-negative integer)"}
                ],
            )
        points.append(value)
    return points[0] if points else None


class StreamApi:
    """The server-sent event stream."""

    def __init__(self, *, hub: EventHub, store: JobStore, heartbeat_s: float = 15.0) -> None:
        self.hub = hub
        self.store = store
        self.heartbeat_s = heartbeat_s

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/events/stream", self.stream)]

    async def stream(self, request: web.Request) -> web.StreamResponse:
        job_id = request.query.get("job_id") or None
        if job_id is not None and (
            not JOB_ID_PATTERN.match(job_id) or not await self.store.job_exists(job_id)
        ):
            raise NotFound(f"no job {job_id}")
        after = _resume_point(request)
        if after is None:
            # "Now" is fixed before subscribing; the replay below covers anything committed
            # between the two, so nothing after "now" can be missed.
            after = 0 if job_id is not None else await self.store.last_event_id()
        subscription = self.hub.subscribe(job_id)
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                }
            )
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            try:
                last_sent = await self._replay(response, job_id=job_id, after=after)
                await self._follow(response, subscription, last_sent=last_sent)
            except ConnectionResetError:
                pass  # the client went away; it resumes with Last-Event-ID
            return response
        finally:
            self.hub.unsubscribe(subscription)

    async def _replay(self, response: web.StreamResponse, *, job_id: str | None, after: int) -> int:
        last = after
        async for events in pages_after(self.store, after, job_id=job_id):
            await response.write(b"".join(format_event(event) for event in events))
            last = events[-1].id
        return last

    async def _follow(
        self, response: web.StreamResponse, subscription: Subscription, *, last_sent: int
    ) -> None:
        queue = subscription.queue
        while True:
            try:  # not wait_for: see ClaimLoop._sleep
                async with asyncio.timeout(self.heartbeat_s):
                    first = await queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            batch = [first]
            while not queue.empty() and batch[-1] is not None:
                batch.append(queue.get_nowait())
            chunks = []
            for event in batch:
                if event is None:  # the hub is closing, or this client fell too far behind
                    break
                if event.id > last_sent:  # already sent by the replay: no repeat
                    chunks.append(format_event(event))
                    last_sent = event.id
            if chunks:
                await response.write(b"".join(chunks))
            if batch[-1] is None:
                return
