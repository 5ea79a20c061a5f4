"""Krea API simulator (REFERENCE.md section 2): generate, jobs, cancel and unsigned webhooks."""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulators.base import ProviderSimulator
from simulators.config import SimulatorConfig
from simulators.handlers import (
    authenticated,
    counted,
    held_while_silent,
    poll_faults,
    submit_faults,
)
from simulators.images import clamp_side, file_url
from simulators.jobs import Lifecycle, SimJob, newest_first
from simulators.wire import is_http_url, iso_ms, json_response, read_json_object

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAILURE_MESSAGE = "simulated generation failure"
# REFERENCE.md section 2 documents no content-refusal shape: only that a failed job carries
# its details in `result.error` (a string). So a content refusal is a `failed` job whose
# `result.error` names the content policy, on `GET /jobs/{id}` and in the webhook alike.
CONTENT_REFUSAL_MESSAGE = (
    "content policy violation: the request was flagged as NSFW by the safety filter"
)
# REFERENCE.md section 2: 402 is Krea's documented answer when the account is out of credits,
# the refusal that stops every submit whatever its body.
REFUSAL_STATUS = 402
REFUSAL_MESSAGE = "out of credits"


class FluxDevBody(BaseModel):
    """Body of `bfl/flux-1-dev`: Krea rejects unknown fields for this model.

    Field names mirror Krea's wire names. The seed page (003) uses camelCase for the image
    fields while REFERENCE.md lists snake_case ones, so both spellings are accepted.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=1800)
    strength: float | None = None
    seed: float | None = None
    steps: int | None = Field(None, ge=1, le=100)
    width: float | None = Field(None, ge=512, le=2368)
    height: float | None = Field(None, ge=512, le=2368)
    guidance_scale_flux: float | None = Field(None, ge=0, le=24)
    imageUrl: str | None = None
    image_url: str | None = None
    styleImages: list[dict[str, Any]] | None = None
    style_images: list[dict[str, Any]] | None = None
    imageStyleRefs: list[dict[str, Any]] | None = None
    styles: list[dict[str, Any]] | None = None
    relaxedModeAccess: bool | None = None


class GenericBody(BaseModel):
    """Body of any other Krea image model: only `prompt` is checked, the rest passes."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(max_length=1800)


STRICT_BODIES: dict[str, type[BaseModel]] = {"bfl/flux-1-dev": FluxDevBody}


class KreaConfig(SimulatorConfig):
    """The Krea simulator's config: the common one plus the API token it accepts."""

    # Fake by design, as every simulator credential: it only ever unlocks a local simulator.
    krea_token: str = "sim-krea-token"  # noqa: S105


@dataclass(slots=True, kw_only=True, eq=False)
class KreaJob(SimJob):
    """A Krea job plus the output size it will advertise."""

    width: int
    height: int


def _summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors()
    )


def _iso_us(created_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=created_us)).isoformat().replace("+00:00", "Z")


def _parse_cursor(cursor: str) -> int:
    parsed = datetime.fromisoformat(cursor.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // timedelta(microseconds=1)


class KreaSimulator(ProviderSimulator[KreaConfig]):
    """Simulates api.krea.ai: Bearer auth, pending-job answers, terminal-state webhooks."""

    name: ClassVar[str] = "krea"
    lifecycle: ClassVar[Lifecycle] = Lifecycle(
        queue_steps=("queued",),
        run_steps=("processing",),
        succeeded="completed",
        failed="failed",
        cancelled="cancelled",
    )
    verbose_lifecycle: ClassVar[Lifecycle] = lifecycle.with_steps(
        ("backlogged", "queued", "scheduled"), ("processing", "sampling", "intermediate-complete")
    )
    rate_limit_message: ClassVar[str] = "maximum concurrent jobs reached"
    unauthorized_message: ClassVar[str] = "invalid or missing API token"
    # Krea documents no webhook retry: one attempt unless the config asks for more.
    default_callback_attempts: ClassVar[int] = 1

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        super().__init__(KreaConfig.adopt(config))
        # Creation order doubles as time order (creation times strictly increase), which lets
        # the list endpoint find a cursor by bisection.
        self._order: list[KreaJob] = []
        self._order_us: list[int] = []

    def on_reset(self) -> None:
        self._order.clear()
        self._order_us.clear()

    def error_response(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return json_response({"error": message}, status=status, headers=headers)

    def refused_submit(self) -> web.Response:
        return self.error_response(REFUSAL_STATUS, REFUSAL_MESSAGE)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/generate/image/{model:.+}", self._generate)
        router.add_get("/jobs", self._list_jobs)
        router.add_get("/jobs/{job_id}", self._get_job)
        router.add_delete("/jobs/{job_id}", self._cancel_job)

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.config.krea_token}"

    def job_json(self, job: KreaJob, now: float, *, as_submitted: bool = False) -> dict[str, Any]:
        """Render the job object exactly as `GET /jobs/{id}` and the webhook carry it.

        `as_submitted` renders the pending job of the submit answer, even for a job that
        completed at once (the early-webhook fault).
        """
        if as_submitted:
            return {
                "job_id": job.id,
                "status": self.current_lifecycle().queue_steps[0],
                "created_at": iso_ms(job.created_wall),
                "completed_at": None,
                "result": None,
            }
        outcome = job.outcome(now)
        result: dict[str, Any] | None = None
        if outcome == "succeeded":
            url = file_url(
                job.base_url, f"{job.id}-0", width=job.width, height=job.height, fmt="png"
            )
            result = {"urls": [url]}
        elif outcome == "failed":
            result = {"error": CONTENT_REFUSAL_MESSAGE if job.refused_content else _FAILURE_MESSAGE}
        return {
            "job_id": job.id,
            "status": self.public_status(job, now),
            "created_at": iso_ms(job.created_wall),
            "completed_at": iso_ms(job.wall(job.terminal_mono)) if outcome else None,
            "result": result,
        }

    def render_callback(self, job: SimJob) -> tuple[bytes, dict[str, str]]:
        assert isinstance(job, KreaJob)
        # A timer may fire a hair before the terminal instant; never send a pending job.
        now = max(time.monotonic(), job.terminal_mono)
        return orjson.dumps(self.job_json(job, now)), {"Content-Type": "application/json"}

    @counted("submits")
    @authenticated
    @submit_faults
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        body, error = await read_json_object(request)
        if error is not None:
            return self.rejected(error)
        try:
            STRICT_BODIES.get(model, GenericBody).model_validate(body)
        except ValidationError as exc:
            return self.rejected(_summarise(exc))
        callback_url = request.headers.get("X-Webhook-URL")
        if callback_url is not None and not is_http_url(callback_url):
            return self.rejected("X-Webhook-URL must be an http(s) URL")

        prompt = str(body["prompt"])
        plan = self.faults.plan_job(prompt)
        job = KreaJob(
            **self.new_job(
                request,
                plan,
                job_id=str(uuid.uuid4()),
                model=model,
                prompt=prompt,
                body=body,
                callback_url=callback_url,
            ),
            width=clamp_side(body.get("width"), 1024),
            height=clamp_side(body.get("height"), 1024),
        )
        self._order.append(job)
        self._order_us.append(job.created_us)
        # Rendered before any early webhook, as the real API answers with the pending job.
        answer = self.job_json(job, job.created_mono, as_submitted=True)
        await self.start_job(job, plan)
        return json_response(answer)

    @counted("status_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        job = self.find_job(KreaJob, request.match_info["job_id"], missing="job not found")
        return json_response(self.job_json(job, time.monotonic()))

    @counted("list_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _list_jobs(self, request: web.Request) -> web.StreamResponse:
        limit, before_us = self.page_query(request, ("limit", 100, 1000), ("cursor", _parse_cursor))
        now = time.monotonic()
        end = len(self._order)
        if before_us is not None:
            end = bisect.bisect_left(self._order_us, before_us)
        # Newest first, one more than asked for to learn whether another page follows; the
        # cursor is the creation time of the last job on the page.
        wanted = self.status_is(request.query.get("status"), now)
        page, _ = newest_first(self._order, end, wanted, limit + 1)
        next_cursor = _iso_us(page[limit - 1].created_us) if len(page) > limit else None
        items = [self.job_json(job, now) for job in page[:limit]]
        return json_response({"items": items, "next_cursor": next_cursor})

    @counted("cancels")
    @authenticated
    async def _cancel_job(self, request: web.Request) -> web.StreamResponse:
        job = self.find_job(KreaJob, request.match_info["job_id"], missing="job not found")
        now = time.monotonic()
        if job.outcome(now) is not None:
            # Krea only cancels queued or processing jobs; the exact code is undocumented.
            return self.error_response(
                409, f"job cannot be cancelled in status {self.public_status(job, now)}"
            )
        self.cancel_job(job, now)
        return json_response(self.job_json(job, now))


def create_krea_app(config: SimulatorConfig | None = None) -> web.Application:
    """Build the Krea simulator application."""
    return KreaSimulator(config).build_app()
