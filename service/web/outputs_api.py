"""GET /v1/jobs/{id}/outputs/{index}: an archived output's bytes, streamed from the output store,
with its sha256 as a strong ETag (a matching If-None-Match is answered 304)."""

from __future__ import annotations

import re

import structlog
from aiohttp import web

from service.archive.storage import OutputStorage, StorageError
from service.errors import NotFound, ServiceError
from service.logs import get_logger
from service.store.archive import ArchiveQueue
from service.web.jobs_api import JOB_ID_PATTERN

MAX_INDEX = 2**31 - 1  # the database's integer


class OutputStoreUnavailable(ServiceError):
    status = 503
    code = "output_store_unavailable"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match asks: `*`, or any listed tag with W/ ignored."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


class OutputsApi:
    """Serves archived outputs; the bearer-token middleware covers it (under /v1/)."""

    def __init__(self, queue: ArchiveQueue, storage: OutputStorage | None) -> None:
        self.queue = queue
        self.storage = storage
        self._log = get_logger("service.outputs")

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/jobs/{job_id}/outputs/{index}", self.get_output)]

    async def get_output(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        raw_index = request.match_info["index"]
        if not JOB_ID_PATTERN.match(job_id) or not re.fullmatch(r"\d{1,10}", raw_index):
            raise NotFound(f"no output {raw_index} of job {job_id}", code="output_not_found")
        index = int(raw_index)
        found = await self.queue.lookup(job_id, index) if index <= MAX_INDEX else None
        if found is None or not found.exists:
            raise NotFound(f"no output {index} of job {job_id}", code="output_not_found")
        structlog.contextvars.bind_contextvars(job_id=job_id)
        archived = found.archived
        if archived is None or self.storage is None:
            raise NotFound(
                f"output {index} of job {job_id} is not archived", code="output_not_archived"
            )
        etag = f'"{archived.sha256}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
        if etag_matches(request.headers.get("If-None-Match", ""), etag):
            return web.Response(status=304, headers=headers)
        try:
            size, chunks = await self.storage.open(archived.storage_key)
        except StorageError as exc:
            self._log.warning("output_store_read_failed", index=index, error=str(exc))
            raise OutputStoreUnavailable("the output store could not be read; retry later") from exc
        response = web.StreamResponse(headers={**headers, "Content-Type": archived.content_type})
        response.content_length = size
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response
