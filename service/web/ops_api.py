"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from aiohttp import web

from service import metrics
from service.db.database import Database
from service.errors import DatabaseUnavailable
from service.store.archive import ArchiveQueue
from service.store.outbox import WebhookOutbox
from service.store.postgres import PostgresJobStore
from service.web.middleware import error_response, json_response
from service.web.openapi import openapi_document

#: The (status, provider) series of `jobs` set at least once: the gauges are the process's, so
#: this set is too (an app made later in the same process zeroes what an earlier one set).
_job_series: set[tuple[str, str]] = set()


class OpsApi:
    """/healthz, /readyz, /metrics and /openapi.json."""

    def __init__(
        self,
        db: Database,
        *,
        archive: ArchiveQueue,
        outbox: WebhookOutbox,
        store: PostgresJobStore,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.db = db
        self.archive = archive
        self.outbox = outbox
        self.store = store
        self.draining = draining

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
        ]

    async def healthz(self, _request: web.Request) -> web.Response:
        # pid: which of a `serve`'s WEB_CONCURRENCY processes answered.
        return json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.draining():  # shutting down (service.web.shutdown): send nothing more here
            return error_response(503, "shutting_down", "this instance is shutting down")
        await self.db.ping()  # DatabaseUnavailable -> 503 through the error middleware
        return json_response({"status": "ready"})

    async def metrics(self, _request: web.Request) -> web.Response:
        # The backlogs and live jobs are the database's figures (shared by every instance), read
        # at the scrape; with the database down the last readings stay and the rest is served.
        # One failure skips the other reads: each could wait out the pool's timeout (5 s), and
        # the scrape has its own (Prometheus: 10 s by default).
        with contextlib.suppress(DatabaseUnavailable):
            metrics.ARCHIVE_BACKLOG.set(await self.archive.backlog())
            pending, overdue_s = await self.outbox.backlog()
            metrics.CLIENT_WEBHOOK_BACKLOG.set(pending)
            metrics.CLIENT_WEBHOOK_OVERDUE.set(overdue_s)
            self._set_live_jobs(await self.store.live_jobs())
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def _set_live_jobs(self, live: dict[tuple[str, str], tuple[int, float]]) -> None:
        """A series once set stays, at 0 when its jobs are gone: an alert on it sees 0, not an
        absent series (and a stale count never lingers)."""
        for key in _job_series - live.keys():
            metrics.JOBS.labels(*key).set(0)
            metrics.JOBS_OLDEST_AGE.labels(*key).set(0)
        for key, (count, oldest_s) in live.items():
            metrics.JOBS.labels(*key).set(count)
            metrics.JOBS_OLDEST_AGE.labels(*key).set(oldest_s)
        _job_series.update(live.keys())

    async def openapi(self, _request: web.Request) -> web.Response:
        return json_response(openapi_document())
