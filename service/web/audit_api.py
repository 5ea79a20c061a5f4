"""The audit chain over HTTP (CONTRACT.md, Audit chain): the checkpoints, and the verification
of one job's chain (what the operator page shows)."""

from __future__ import annotations

import re

from aiohttp import web

from schemas.audit import CheckpointList
from service.audit.verify import verify_job
from service.errors import NotFound
from service.store.audit import AuditLog
from service.web.jobs_api import JOB_ID_PATTERN, query_error
from service.web.middleware import json_response

DEFAULT_CHECKPOINTS = 100
MAX_CHECKPOINTS = 1000


def _int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if re.fullmatch(r"[0-9]{1,19}", raw) else low - 1  # ASCII digits only
    if not low <= value <= high:
        raise query_error(name, f"must be an integer in {low}..{high}")
    return value


class AuditApi:
    """GET /v1/audit/checkpoints and GET /v1/jobs/{id}/audit."""

    def __init__(self, log: AuditLog, *, public_key: str | None) -> None:
        self.log = log
        self.public_key = public_key

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/audit/checkpoints", self.checkpoints),
            web.get("/v1/jobs/{job_id}/audit", self.job_audit),
        ]

    async def checkpoints(self, request: web.Request) -> web.Response:
        """Oldest first, after the checkpoint id `after`, at most `limit`."""
        after = _int_query(request, "after", default=0, low=0, high=2**62)
        limit = _int_query(
            request, "limit", default=DEFAULT_CHECKPOINTS, low=1, high=MAX_CHECKPOINTS
        )
        page = await self.log.checkpoints(after=after, limit=limit)
        body = CheckpointList(checkpoints=page, public_key=self.public_key)
        return json_response(body.model_dump(mode="json"))

    async def job_audit(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        audit = await verify_job(self.log, job_id) if JOB_ID_PATTERN.match(job_id) else None
        if audit is None:
            raise NotFound(f"no job {job_id}")
        return json_response(audit.model_dump(mode="json"))
