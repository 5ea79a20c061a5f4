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
from service.web.middleware import error_response, json_response
from service.web.openapi import openapi_document


class OpsApi:
    """/healthz, /readyz, /metrics and /openapi.json."""

    def __init__(
        self,
        db: Database,
        *,
        archive: ArchiveQueue,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.db = db
        self.archive = archive
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
        # The backlog is the database's figure (shared by every instance), read at the scrape;
        # with the database down the last reading stays and the rest is still served.
        with contextlib.suppress(DatabaseUnavailable):
            metrics.ARCHIVE_BACKLOG.set(await self.archive.backlog())
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def openapi(self, _request: web.Request) -> web.Response:
        return json_response(openapi_document())
