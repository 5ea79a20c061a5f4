"""Shared machinery of the provider simulators: config and faults, lazy jobs, webhooks, control API.

A job never owns a task: its status is computed from the time elapsed since it was created (see
`Lifecycle`), so a simulator can hold 100,000 in-flight jobs cheaply. Only webhook delivery is
scheduled, with one `loop.call_later` per job that has a callback URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import random
import re
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulators.images import MAX_SIDE, ImageFormat, render_image

log = logging.getLogger(__name__)

# Prompt markers: deterministic faults for one job, whatever the global config says.
FAIL_MARKER = "[fail]"
DROP_CALLBACK_MARKER = "[drop-callback]"
EARLY_MARKER = "[early]"

CONTROL_PREFIX = "/_sim"

# Counters always present in `GET /_sim/stats` (zero until something happens), so tests can
# read any of them without guarding against a missing key.
STAT_NAMES = (
    "submits",
    "jobs_created",
    "duplicate_submits",
    "auth_failures",
    "validation_errors",
    "rate_limited",
    "server_errors",
    "errors_after_submit",
    "poll_errors",
    "status_requests",
    "status_stream_requests",
    "result_requests",
    "list_requests",
    "asset_requests",
    "file_requests",
    "jwks_requests",
    "key_rotations",
    "cancels",
    "jobs_cancelled",
    "callback_attempts",
    "callbacks_sent",
    "callbacks_failed",
    "callbacks_abandoned",
    "callbacks_dropped",
    "callbacks_duplicated",
)

Outcome = Literal["succeeded", "failed", "cancelled"]
CallbackState = Literal["none", "scheduled", "delivering", "delivered", "dropped", "failed"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimulatorConfig(BaseModel):
    """Timing, credentials and injected faults of one simulator; changeable at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Timing: a job spends queue_seconds queued, then run_seconds running, then ends.
    queue_seconds: float = Field(0.2, ge=0)
    run_seconds: float = Field(0.5, ge=0)
    verbose_statuses: bool = Field(
        False, description="walk through every documented intermediate status (Krea, Scenario)"
    )
    public_base_url: str | None = Field(
        None, description="base of URLs the simulator hands out; default: the request's host"
    )
    random_seed: int | None = Field(None, description="seed for fail_rate / drop_rate draws")

    # Credentials the simulators accept; anything else gets 401. Fake by design: they only
    # ever unlock a local simulator.
    krea_token: str = "sim-krea-token"  # noqa: S105
    fal_key: str = "sim-fal-key"
    fal_user_id: str = "sim-user"
    scenario_api_key: str = "sim-scenario-key"
    scenario_api_secret: str = "sim-scenario-secret"  # noqa: S105

    # Job outcome faults.
    fail_rate: float = Field(0.0, ge=0, le=1)

    # Submit faults: counters are consumed one per submit request.
    rate_limit_next: int = Field(0, ge=0)
    retry_after_seconds: float = Field(1.0, ge=0)
    server_error_next: int = Field(0, ge=0)
    server_error_status: int = Field(503, ge=500, le=599)
    error_after_submit_next: int = Field(0, ge=0)
    error_after_submit_mode: Literal["status", "drop"] = "status"
    error_after_submit_status: int = Field(500, ge=500, le=599)
    # Poll faults: consumed one per status / result / list / asset request.
    poll_error_next: int = Field(0, ge=0)
    slow_seconds: float = Field(0.0, ge=0, description="delay before answering any API request")

    # Webhook faults.
    callback_duplicates: int = Field(0, ge=0)
    callback_drop_rate: float = Field(0.0, ge=0, le=1)
    callback_delay_seconds: float = Field(0.0, ge=0)
    callback_early: bool = False
    callback_on_cancel: bool = Field(
        True, description="send the terminal webhook of a cancelled job (fal: an ERROR one)"
    )
    callback_bad_signature: bool = False
    callback_timestamp_skew_seconds: float = 0.0

    # Webhook delivery policy; None means the provider's documented policy (fal 10, Krea 1).
    callback_max_attempts: int | None = Field(None, ge=1)
    callback_retry_base_seconds: float = Field(0.2, ge=0)
    callback_retry_max_seconds: float = Field(5.0, ge=0)
    callback_timeout_seconds: float = Field(15.0, gt=0)

    # fal validates input when the runner starts (so a bad body is an ERROR result/webhook);
    # set this to answer 422 at submit instead.
    fal_validate_on_submit: bool = False


@dataclass(slots=True, kw_only=True, eq=False)
class SimJob:
    """One simulated job; everything time-dependent is derived from the creation instant."""

    id: str
    model: str
    prompt: str
    input: dict[str, Any]
    base_url: str
    created_mono: float
    created_wall: float
    queue_s: float
    run_s: float
    will_fail: bool
    drop_callbacks: bool
    callback_url: str | None
    fingerprint: str
    cancelled_mono: float | None = None
    callback_state: CallbackState = "none"
    callback_attempts: int = 0
    callbacks_delivered: int = 0

    @property
    def run_start_mono(self) -> float:
        """When the job leaves the queue and starts running."""
        return self.created_mono + self.queue_s

    @property
    def end_mono(self) -> float:
        """When the job ends if nobody cancels it."""
        return self.created_mono + self.queue_s + self.run_s

    @property
    def terminal_mono(self) -> float:
        """When the job ends, taking a cancellation into account."""
        return self.cancelled_mono if self.cancelled_mono is not None else self.end_mono

    def outcome(self, now: float) -> Outcome | None:
        """Return how the job ended, or None while it is still queued or running."""
        if self.cancelled_mono is not None and now >= self.cancelled_mono:
            return "cancelled"
        if now < self.end_mono:
            return None
        return "failed" if self.will_fail else "succeeded"

    def wall(self, mono: float) -> float:
        """Convert a monotonic instant of this job to wall-clock seconds."""
        return self.created_wall + (mono - self.created_mono)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A provider's status names; the queue and run phases are split evenly among their steps."""

    queue_steps: Sequence[str]
    run_steps: Sequence[str]
    succeeded: str
    failed: str
    cancelled: str

    def points(self, job: SimJob) -> list[tuple[float, str]]:
        """Return every (monotonic instant, status) the job goes through, reached or not."""
        points: list[tuple[float, str]] = []
        for offset, steps, span in (
            (job.created_mono, self.queue_steps, job.queue_s),
            (job.run_start_mono, self.run_steps, job.run_s),
        ):
            for index, name in enumerate(steps):
                points.append((offset + span * index / len(steps), name))
        if job.cancelled_mono is not None:
            cancelled_at = job.cancelled_mono
            points = [p for p in points if p[0] <= cancelled_at]
            points.append((cancelled_at, self.cancelled))
        else:
            points.append((job.end_mono, self.failed if job.will_fail else self.succeeded))
        return points

    def history(self, job: SimJob, now: float) -> list[tuple[float, str]]:
        """Return the statuses reached by `now`, oldest first."""
        reached = [p for p in self.points(job) if p[0] <= now]
        return reached or [(job.created_mono, self.queue_steps[0])]

    def status(self, job: SimJob, now: float) -> str:
        """The provider's status name for the job at `now`."""
        return self.history(job, now)[-1][1]


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Timing and fault decisions taken once, when a job is created."""

    queue_s: float
    run_s: float
    will_fail: bool
    early: bool
    drop_callbacks: bool


def iso_ms(wall: float) -> str:
    """Format wall-clock seconds the way the providers do: `2025-01-15T10:30:00.000Z`."""
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Answer JSON serialised with orjson (fast enough for load tests against the simulator)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


async def read_json(request: web.Request) -> tuple[Any, str | None]:
    """Return (body, None), or (None, reason) when the body is not valid JSON."""
    raw = await request.read()
    if not raw:
        return None, "request body is empty"
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, f"request body is not valid JSON: {exc}"


def format_seconds(seconds: float) -> str:
    """Render a Retry-After value: an integer when whole, as HTTP expects, else a decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def fingerprint(model: str, body: Any, callback_url: str | None) -> str:
    """Identify a logical submission, so repeated submits of the same work can be counted."""
    canonical = orjson.dumps([model, body, callback_url], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def is_http_url(value: str) -> bool:
    """Accept only absolute http(s) URLs as callback targets, as the providers do."""
    return re.match(r"^https?://[^\s/]+", value) is not None


_FILE_NAME = re.compile(r"^(?P<stem>[\w.-]+?)(?:-(?P<w>\d+)x(?P<h>\d+))?\.(?P<ext>jpe?g|png)$")


class ProviderSimulator(ABC):
    """Base of the three simulators: state, fault gates, webhook delivery and `/_sim` routes."""

    name: ClassVar[str]
    lifecycle: ClassVar[Lifecycle]
    verbose_lifecycle: ClassVar[Lifecycle]
    # Attempts per webhook when config.callback_max_attempts is None.
    default_callback_attempts: ClassVar[int] = 1

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._initial_config = (config or SimulatorConfig()).model_copy()
        self.config = self._initial_config.model_copy()
        self.jobs: dict[str, SimJob] = {}
        self.stats: Counter[str] = Counter()
        self._fingerprints: Counter[str] = Counter()
        self._rng = random.Random(self.config.random_seed)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._last_wall_us = 0
        # Reset and shutdown bump the generation and set the event, so that every injected
        # delay (slow answers, webhook backoff) ends at once instead of holding the server.
        self._generation = 0
        self._wake = asyncio.Event()

    # ----- configuration and state -------------------------------------------------------

    def update_config(self, patch: Mapping[str, Any]) -> SimulatorConfig:
        """Merge `patch` into the config (validated as a whole); used by `POST /_sim/config`."""
        merged = {**self.config.model_dump(), **patch}
        self.config = SimulatorConfig.model_validate(merged)
        if "random_seed" in patch:
            self._rng.seed(self.config.random_seed)
        return self.config

    def reset(self) -> None:
        """Forget jobs, stats and faults: back to the config the simulator was built with."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        self._interrupt()
        self.jobs.clear()
        self.stats.clear()
        self._fingerprints.clear()
        self.config = self._initial_config.model_copy()
        self._rng.seed(self.config.random_seed)
        self.on_reset()

    def _interrupt(self) -> None:
        self._generation += 1
        self._wake.set()
        self._wake = asyncio.Event()

    async def pause(self, seconds: float) -> bool:
        """Sleep for an injected delay; return True if a reset or shutdown cut it short."""
        generation, wake = self._generation, self._wake
        with contextlib.suppress(TimeoutError):  # not wait_for, which can swallow a cancel
            async with asyncio.timeout(seconds):
                await wake.wait()
        return generation != self._generation

    def on_reset(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Let a provider clear its own indexes on reset."""

    def current_lifecycle(self) -> Lifecycle:
        """The status names in force: the verbose walk-through or the short one."""
        return self.verbose_lifecycle if self.config.verbose_statuses else self.lifecycle

    def public_status(self, job: SimJob, now: float) -> str:
        """The job's status as the provider's API would show it at `now`."""
        return self.current_lifecycle().status(job, now)

    def base_url(self, request: web.Request) -> str:
        """Root of the URLs handed out (result, status, files): configured or the request's."""
        configured = self.config.public_base_url
        if configured:
            return configured.rstrip("/")
        # Interned: every job keeps its base URL, and they are nearly always the same text.
        return sys.intern(f"{request.scheme}://{request.host}")

    def _consume(self, field: str) -> bool:
        """Take one unit of a `*_next` fault counter; True when one was left."""
        left = int(getattr(self.config, field))
        if left <= 0:
            return False
        self.config = self.config.model_copy(update={field: left - 1})
        return True

    def next_wall_us(self) -> int:
        """Wall-clock creation time in whole microseconds, strictly increasing.

        Integers (not floats) so that a time cursor parsed back from ISO text compares exactly,
        and strictly increasing so that two jobs never share a cursor value.
        """
        self._last_wall_us = max(time.time_ns() // 1000, self._last_wall_us + 1)
        return self._last_wall_us

    def plan_job(self, prompt: str) -> JobPlan:
        """Decide a new job's timing and faults from the config and the prompt's markers."""
        cfg = self.config
        early = cfg.callback_early or EARLY_MARKER in prompt
        will_fail = FAIL_MARKER in prompt or (
            cfg.fail_rate > 0 and self._rng.random() < cfg.fail_rate
        )
        return JobPlan(
            queue_s=0.0 if early else cfg.queue_seconds,
            run_s=0.0 if early else cfg.run_seconds,
            will_fail=will_fail,
            early=early,
            drop_callbacks=DROP_CALLBACK_MARKER in prompt,
        )

    def register(self, job: SimJob) -> None:
        """Store a new job and count its submission (repeats share a fingerprint)."""
        self.jobs[job.id] = job
        self._fingerprints[job.fingerprint] += 1
        self.stats["jobs_created"] += 1
        if self._fingerprints[job.fingerprint] > 1:
            self.stats["duplicate_submits"] += 1

    # ----- provider hooks ----------------------------------------------------------------

    @abstractmethod
    def error_response(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """Answer an error in the provider's own body shape."""

    @abstractmethod
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the provider's API routes."""

    def rate_limit_message(self) -> str:
        """Message of the injected 429, in the provider's words."""
        return "rate limit exceeded"

    def render_callback(self, job: SimJob) -> tuple[bytes, dict[str, str]]:
        """Return the body and headers of one webhook attempt (providers with webhooks)."""
        raise NotImplementedError(f"{self.name} sends no webhooks")

    def job_summary(self, job: SimJob, now: float) -> dict[str, Any]:
        """Describe a job for `GET /_sim/jobs`."""
        return {
            "id": job.id,
            "model": job.model,
            "prompt": job.prompt,
            "status": self.public_status(job, now),
            "outcome": job.outcome(now),
            "created_at": iso_ms(job.created_wall),
            "fingerprint": job.fingerprint,
            "submit_count": self._fingerprints[job.fingerprint],
            "callback_url": job.callback_url,
            "callback_state": job.callback_state,
            "callback_attempts": job.callback_attempts,
            "callbacks_delivered": job.callbacks_delivered,
        }

    # ----- fault gates -------------------------------------------------------------------

    def submit_fault(self) -> web.Response | None:
        """Answer an injected 429 or 5xx for this submit request, if one is armed."""
        if self._consume("rate_limit_next"):
            self.stats["rate_limited"] += 1
            retry_after = format_seconds(self.config.retry_after_seconds)
            return self.error_response(
                429, self.rate_limit_message(), headers={"Retry-After": retry_after}
            )
        if self._consume("server_error_next"):
            self.stats["server_errors"] += 1
            return self.error_response(self.config.server_error_status, "simulated server error")
        return None

    def poll_fault(self) -> web.Response | None:
        """Answer an injected 5xx for this read request, if one is armed."""
        if self._consume("poll_error_next"):
            self.stats["poll_errors"] += 1
            return self.error_response(self.config.server_error_status, "simulated server error")
        return None

    def after_submit_fault(self, request: web.Request) -> web.Response | None:
        """Hide a created job behind a 5xx or a dropped connection: an unknown outcome."""
        if not self._consume("error_after_submit_next"):
            return None
        self.stats["errors_after_submit"] += 1
        if self.config.error_after_submit_mode == "drop":
            # Aborting the transport makes the client see the connection close with no answer;
            # the empty response below is never written.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        return self.error_response(self.config.error_after_submit_status, "simulated server error")

    # ----- webhooks ----------------------------------------------------------------------

    def schedule_callback(self, job: SimJob) -> None:
        """Arrange delivery of the job's webhook when it reaches its terminal state."""
        if job.callback_url is None:
            return
        old = self._timers.pop(job.id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, job.terminal_mono - time.monotonic()) + self.config.callback_delay_seconds
        loop = asyncio.get_running_loop()
        # An empty context: a copy of the request's would keep request objects alive per job.
        self._timers[job.id] = loop.call_later(
            delay, self._start_delivery, job, context=contextvars.Context()
        )
        job.callback_state = "scheduled"

    def cancel_job(self, job: SimJob, now: float) -> None:
        """Cancel a pending job now; its webhook follows unless `callback_on_cancel` is off."""
        job.cancelled_mono = now
        self.stats["jobs_cancelled"] += 1
        if self.config.callback_on_cancel:
            self.schedule_callback(job)
            return
        timer = self._timers.pop(job.id, None)
        if timer is not None:
            timer.cancel()
            job.callback_state = "none"

    def _start_delivery(self, job: SimJob) -> None:
        self._timers.pop(job.id, None)
        task = asyncio.create_task(self.deliver_callbacks(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver_callbacks(self, job: SimJob) -> None:
        """Deliver (or drop) the job's webhook, plus the configured duplicates."""
        if job.callback_url is None:
            return
        cfg = self.config
        job.callback_state = "delivering"
        if job.drop_callbacks or (
            cfg.callback_drop_rate > 0 and self._rng.random() < cfg.callback_drop_rate
        ):
            self.stats["callbacks_dropped"] += 1
            job.callback_state = "dropped"
            return
        for copy in range(1 + cfg.callback_duplicates):
            if copy:
                self.stats["callbacks_duplicated"] += 1
            await self._deliver_one(job, job.callback_url)
        job.callback_state = "delivered" if job.callbacks_delivered else "failed"

    async def _deliver_one(self, job: SimJob, url: str) -> bool:
        """POST one webhook, retrying non-2xx answers and timeouts per the provider's policy."""
        cfg = self.config
        attempts = cfg.callback_max_attempts or self.default_callback_attempts
        backoff = cfg.callback_retry_base_seconds
        session = self._client_session()
        generation = self._generation
        for attempt in range(1, attempts + 1):
            if generation != self._generation:
                break  # reset or shutting down: this job is gone
            body, headers = self.render_callback(job)
            job.callback_attempts += 1
            self.stats["callback_attempts"] += 1
            try:
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=cfg.callback_timeout_seconds),
                ) as response:
                    await response.read()
                    delivered = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("webhook to %s failed: %r", url, exc)
                delivered = False
            if delivered:
                self.stats["callbacks_sent"] += 1
                job.callbacks_delivered += 1
                return True
            self.stats["callbacks_failed"] += 1
            if attempt < attempts:
                await self.pause(min(backoff, cfg.callback_retry_max_seconds))
                backoff *= 2
        self.stats["callbacks_abandoned"] += 1
        return False

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _on_shutdown(self, app: web.Application) -> None:
        # Runs before aiohttp waits for in-flight handlers: end every injected delay first.
        del app
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._interrupt()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_cleanup(self, app: web.Application) -> None:
        del app
        if self._session is not None:
            await self._session.close()

    # ----- application -------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Build the aiohttp application: control routes first, then the provider's API."""

        @web.middleware
        async def slow_down(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Apply the `slow_seconds` fault to API requests (never to controls or JWKS)."""
            slow = self.config.slow_seconds
            if slow > 0 and not request.path.startswith((CONTROL_PREFIX, "/.well-known")):
                await self.pause(slow)
            return await handler(request)

        app = web.Application(middlewares=[slow_down])
        app[SIMULATOR_KEY] = self
        router = app.router
        router.add_get(f"{CONTROL_PREFIX}/config", self._get_config)
        router.add_post(f"{CONTROL_PREFIX}/config", self._post_config)
        router.add_get(f"{CONTROL_PREFIX}/stats", self._get_stats)
        router.add_get(f"{CONTROL_PREFIX}/jobs", self._get_jobs)
        router.add_post(f"{CONTROL_PREFIX}/reset", self._post_reset)
        router.add_get(f"{CONTROL_PREFIX}/files/{{name}}", self._get_file)
        self.add_control_routes(router)
        self.add_routes(router)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    def add_control_routes(self, router: web.UrlDispatcher) -> None:  # noqa: B027
        """Let a provider add its own `/_sim` routes before the API's catch-all ones."""

    async def _get_config(self, request: web.Request) -> web.Response:
        del request
        return json_response(self.config.model_dump())

    async def _post_config(self, request: web.Request) -> web.Response:
        patch, error = await read_json(request)
        if error is not None or not isinstance(patch, dict):
            return json_response({"error": error or "body must be a JSON object"}, status=400)
        try:
            config = self.update_config(patch)
        except ValidationError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(config.model_dump())

    async def _get_stats(self, request: web.Request) -> web.Response:
        del request
        now = time.monotonic()
        in_flight = sum(1 for job in self.jobs.values() if job.outcome(now) is None)
        return json_response(
            {
                **{name: self.stats[name] for name in STAT_NAMES},
                **self.stats,
                "jobs": len(self.jobs),
                "in_flight": in_flight,
                "callbacks_pending": len(self._timers) + len(self._tasks),
            }
        )

    async def _get_jobs(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        prompt_filter = request.query.get("prompt_contains")
        jobs = [
            self.job_summary(job, now)
            for job in self.jobs.values()
            if prompt_filter is None or prompt_filter in job.prompt
        ]
        return json_response({"jobs": jobs})

    async def _post_reset(self, request: web.Request) -> web.Response:
        del request
        self.reset()
        return json_response({"reset": True})

    async def _get_file(self, request: web.Request) -> web.Response:
        self.stats["file_requests"] += 1
        match = _FILE_NAME.match(request.match_info["name"])
        if match is None:
            return json_response({"error": "file not found"}, status=404)
        width = int(match["w"] or 64)
        height = int(match["h"] or 64)
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            return json_response({"error": "file not found"}, status=404)
        fmt: ImageFormat = "png" if match["ext"] == "png" else "jpeg"
        body = render_image(fmt, width, height)
        return web.Response(
            body=body, content_type=f"image/{fmt}", headers={"Cache-Control": "max-age=86400"}
        )


SIMULATOR_KEY = web.AppKey("simulator", ProviderSimulator)


def get_simulator(app: web.Application) -> ProviderSimulator:
    """Return the simulator object behind an app built by one of the factories."""
    return app[SIMULATOR_KEY]


def file_url(base_url: str, stem: str, *, width: int, height: int, fmt: ImageFormat) -> str:
    """URL of an output image served by the simulator itself."""
    ext = "png" if fmt == "png" else "jpg"
    return f"{base_url}{CONTROL_PREFIX}/files/{stem}-{width}x{height}.{ext}"


def clamp_side(value: Any, default: int) -> int:
    """Read a requested image side leniently (numbers only), kept within what we can render."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return max(1, min(MAX_SIDE, int(value)))
