"""The instance's wake-up path: one LISTEN connection, the event log, and live subscribers.

NOTIFY carries only ids (`"{event_id},{job_id}"`); the events themselves are read from the log
in id order, which is commit order, so reading "after the last id read" never skips an event.
One reader serves every subscriber of the instance: a burst of notifications costs one query,
and each event goes only to the subscribers of its job (plus those following every job), so
the cost of an event grows with the clients interested in it, not with all clients.

The LISTEN connection is dedicated (not from the pool), reconnects by itself when it dies, and
a safety poll every `safety_poll_s` catches anything a silently dead LISTEN would miss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from schemas.events import Event
from service.db.database import connect, is_unavailable_error
from service.errors import DatabaseUnavailable
from service.events.log import pages_after
from service.logs import get_logger
from service.metrics import LISTEN_RECONNECTS
from service.store import JobStore

EVENTS_CHANNEL = "job_events"
#: NOTIFY of the workers: a job became due (created, cancel requested, to be sent again), a
#: client webhook delivery was enqueued. Any instance's change wakes every worker instance.
JOBS_DUE_CHANNEL = "jobs_due"
WEBHOOKS_DUE_CHANNEL = "webhook_deliveries"
ARCHIVES_DUE_CHANNEL = "output_archives"  # a job succeeded: its outputs are to be archived
LISTENER_NAME = "imagejobs-listener"  # application_name of the LISTEN connection


class Subscription:
    """One live follower: all jobs (`job_id=None`) or one job. Events arrive in id order."""

    def __init__(self, job_id: str | None, *, max_queued: int) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_queued)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A client too slow to keep up is cut off rather than buffered without bound; it
            # resumes from the log with Last-Event-ID, losing nothing.
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class EventHub:
    """Fans committed events out to this instance's subscribers."""

    def __init__(
        self,
        *,
        store: JobStore,
        dsn: str,
        safety_poll_s: float = 1.0,
        max_queued: int = 10_000,
        channels: dict[str, Callable[[], None]] | None = None,
    ) -> None:
        self.store = store
        self.dsn = dsn
        self.safety_poll_s = safety_poll_s
        self.max_queued = max_queued
        self.extra_channels = channels or {}  # other channels whose NOTIFY just calls a function
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._last_read = 0
        self._notified_max = 0
        self._interesting = False
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.listen_connected = asyncio.Event()
        self.subscribed = asyncio.Event()  # set at every new subscription (tests await it)
        self.reconnects = 0
        self._log = get_logger("service.events")

    # --- subscribers --------------------------------------------------------------------------

    def subscribe(self, job_id: str | None) -> Subscription:
        subscription = Subscription(job_id, max_queued=self.max_queued)
        if job_id is None:
            self._all.add(subscription)
        else:
            self._by_job.setdefault(job_id, set()).add(subscription)
        self.subscribed.set()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.job_id is None:
            self._all.discard(subscription)
            return
        followers = self._by_job.get(subscription.job_id)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self._by_job[subscription.job_id]

    @property
    def subscriber_count(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_job.values())

    # --- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            self._last_read = await self.store.last_event_id()
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="event-hub-listen"),
            asyncio.create_task(self._read_forever(), name="event-hub-read"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        self.end_streams()

    def end_streams(self) -> None:
        """Ends every open stream; its client resumes after its Last-Event-ID elsewhere or
        later. Done when the server starts shutting down, since it then waits for open
        requests, and a stream (the operator page keeps one open) would hold it until its
        timeout."""
        for subscription in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            with contextlib.suppress(asyncio.QueueFull):
                subscription.queue.put_nowait(None)

    # --- LISTEN -------------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        delay = 0.1
        connected_before = False  # listen_reconnects_total: every connection after the first
        while True:
            lost = asyncio.Event()
            try:
                conn = await connect(self.dsn, application_name=LISTENER_NAME)
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
                for channel, callback in self.extra_channels.items():
                    await conn.add_listener(channel, lambda *_args, cb=callback: cb())
                self._listener = conn
                self.listen_connected.set()
                if connected_before:  # the previous one was lost
                    LISTEN_RECONNECTS.inc()
                self._log.info("event_listener_connected", reconnect=connected_before)
                connected_before = True
                delay = 0.1
                # Events committed while no LISTEN was active are read now.
                self._interesting = True
                self._wake.set()
                for callback in self.extra_channels.values():
                    callback()
                await lost.wait()
            except Exception as exc:
                if not (isinstance(exc, DatabaseUnavailable) or is_unavailable_error(exc)):
                    self._log.exception("event_listener_failed")
            self.listen_connected.clear()
            self.reconnects += 1
            self._log.warning("event_listener_lost", retry_in_s=delay)
            if self._listener is not None:
                with contextlib.suppress(Exception):
                    self._listener.terminate()
                self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event_id_text, _, job_id = payload.partition(",")
        with contextlib.suppress(ValueError):
            self._notified_max = max(self._notified_max, int(event_id_text))
        if self._all or job_id in self._by_job:
            self._interesting = True
        self._wake.set()

    # --- reading the log ----------------------------------------------------------------------

    async def _read_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see ClaimLoop._sleep
                async with asyncio.timeout(self.safety_poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up(safety=not self._interesting and self.subscriber_count > 0)
            except DatabaseUnavailable:
                self._log.warning("event_reader_database_unavailable")
            except Exception:
                self._log.exception("event_reader_failed")

    async def _catch_up(self, *, safety: bool) -> None:
        if not (self._interesting or safety):
            # Nobody here follows what was notified: skip reading it. Anyone who subscribes
            # later replays from the log, which holds everything committed before they came.
            self._last_read = max(self._last_read, self._notified_max)
            return
        self._interesting = False
        async for events in pages_after(self.store, self._last_read):
            for event in events:
                self._dispatch(event)
            self._last_read = events[-1].id

    def _dispatch(self, event: Event) -> None:
        for subscription in self._all:
            subscription.offer(event)
        for subscription in self._by_job.get(event.job_id, ()):
            subscription.offer(event)
