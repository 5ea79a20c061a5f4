"""The base of the three simulators: it wires the parts together and serves them.

Each part has one job: `config` (settings and faults in force), `faults` (which fault strikes
a request or a job), `jobs` (the lazy job model and the job store), `webhooks` (delivery with
retries), `silence` (the requests and webhooks held while silent), `load` (the API requests in
flight), `control` (the `/_sim` routes), `images` (the served outputs). A provider subclass
adds its API routes, auth, error shape and rendering; `handlers` has the decorators its
route handlers share (auth, fault gates, counters).
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from aiohttp import web

from simulators.config import C, ConfigState
from simulators.control import ControlApi
from simulators.faults import Faults
from simulators.handlers import Answer, answer_early
from simulators.jobs import J, JobPlan, JobStore, Lifecycle, NewJob, SimJob, fingerprint
from simulators.load import InFlight
from simulators.pauses import Pauses, client_gone
from simulators.silence import Silence
from simulators.webhooks import WebhookSender
from simulators.wire import CONTROL_PREFIX, iso_ms

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

UNAVAILABLE_MESSAGE = "service unavailable"


class ProviderSimulator(ABC, Generic[C]):
    """One provider's simulator: its config, jobs, counters, faults and webhooks, as an app."""

    name: ClassVar[str]
    lifecycle: ClassVar[Lifecycle]
    verbose_lifecycle: ClassVar[Lifecycle]
    # Attempts per webhook when config.callback_max_attempts is None.
    default_callback_attempts: ClassVar[int] = 1
    # Messages of the injected 429 and of the 401, in the provider's words.
    rate_limit_message: ClassVar[str] = "rate limit exceeded"
    unauthorized_message: ClassVar[str] = "unauthorized"

    def __init__(self, config: C) -> None:
        self.config_state = ConfigState(config)
        self.stats: Counter[str] = Counter()
        self.store = JobStore()
        # Reset and shutdown interrupt these, so that every injected delay (slow answers,
        # webhook backoff) ends at once instead of holding the server.
        self.pauses = Pauses()
        self.faults = Faults(
            self.config_state,
            self.stats,
            self.error_response,
            self.rate_limit_message,
            self.refused_submit,
            self.unavailable_submit,
        )
        self.webhooks = WebhookSender(
            self.config_state,
            self.stats,
            self.pauses,
            self.render_callback,
            self.default_callback_attempts,
        )
        self.silence = Silence(self.config_state, self.stats, self.webhooks)
        self.in_flight = InFlight()

    # ----- state -------------------------------------------------------------------------

    @property
    def config(self) -> C:
        """The config in force (faults included); change it with `update_config`."""
        return self.config_state.current

    @property
    def jobs(self) -> dict[str, SimJob]:
        """Every job since the last reset, by id."""
        return self.store.jobs

    def update_config(self, patch: Mapping[str, Any]) -> C:
        """Merge `patch` into the config (validated as a whole); used by `POST /_sim/config`.

        Turning `silent` off lets the held requests answer and sends the held webhooks.
        """
        was_silent = self.config.silent
        config = self.config_state.update(patch)
        if was_silent and not config.silent:
            self.silence.end()
        return config

    def reset(self) -> None:
        """Forget jobs, stats and faults: back to the config the simulator was built with."""
        self.webhooks.reset()
        self.pauses.interrupt()
        self.silence.reset()
        self.store.clear()
        self.stats.clear()
        self.in_flight.reset_peak()
        self.config_state.reset()
        self.on_reset()

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

    def status_is(self, wanted: str | None, now: float) -> Callable[[SimJob], bool]:
        """A filter on the provider's status name at `now` (None: every job)."""
        return lambda job: wanted is None or self.public_status(job, now) == wanted

    def find_job(self, kind: type[J], job_id: str, *, missing: str) -> J:
        """The provider's job of that id, else a 404 with `missing` (raises `Answer`)."""
        job = self.jobs.get(job_id)
        if not isinstance(job, kind):
            raise Answer(self.error_response(404, missing))
        return job

    def page_query(
        self,
        request: web.Request,
        size: tuple[str, int, int],
        cursor: tuple[str, Callable[[str], T]],
    ) -> tuple[int, T | None]:
        """Read a list endpoint's page size and cursor, or answer 400 (raises `Answer`).

        `size` is (parameter, default, maximum); `cursor` is (parameter, parser).
        """
        (size_name, default, maximum), (cursor_name, parse) = size, cursor
        query = request.query
        try:
            limit = int(query.get(size_name, str(default)))
            position = parse(query[cursor_name]) if cursor_name in query else None
        except ValueError:
            raise Answer(
                self.error_response(400, f"invalid {size_name} or {cursor_name}")
            ) from None
        if not 1 <= limit <= maximum:
            raise Answer(self.error_response(400, f"{size_name} must be between 1 and {maximum}"))
        return limit, position

    def rejected(self, message: str, *, status: int = 400) -> web.Response:
        """Refuse an invalid request in the provider's shape, counted as `validation_errors`."""
        self.stats["validation_errors"] += 1
        return self.error_response(status, message)

    # ----- job lifecycle -----------------------------------------------------------------

    def new_job(
        self,
        request: web.Request,
        plan: JobPlan,
        *,
        job_id: str,
        model: str,
        prompt: str,
        body: dict[str, Any],
        callback_url: str | None = None,
        submission: str | None = None,
    ) -> NewJob:
        """The common fields of a job created now; `submission` overrides the fingerprint."""
        return NewJob(
            id=job_id,
            model=model,
            prompt=prompt,
            input=body,
            base_url=self.base_url(request),
            created_mono=time.monotonic(),
            created_us=self.store.next_wall_us(),
            queue_s=plan.queue_s,
            run_s=plan.run_s,
            will_fail=plan.will_fail,
            drop_callbacks=plan.drop_callbacks,
            callback_url=callback_url,
            fingerprint=submission or fingerprint(model, body, callback_url),
            fail_reason=plan.fail_reason,
        )

    def register(self, job: SimJob) -> None:
        """Store a new job and count its submission (repeats share a fingerprint)."""
        repeat = self.store.add(job)
        self.stats["jobs_created"] += 1
        if job.refused_content:
            self.stats["content_refusals"] += 1
        if repeat:
            self.stats["duplicate_submits"] += 1

    async def start_job(self, job: SimJob, plan: JobPlan) -> None:
        """Register a job, then send its webhook now (the early fault) or when it ends; a job
        created while silent keeps it until the silence ends."""
        self.register(job)
        if self.silence.holds_webhook(job):
            return
        if plan.early and job.callback_url is not None:
            await self.webhooks.deliver(job)
        else:
            self.webhooks.schedule(job)

    def cancel_job(self, job: SimJob, now: float) -> None:
        """Cancel a pending job now; its webhook follows unless `callback_on_cancel` is off
        (a webhook held by the silence stays held, sent only once the silence ends)."""
        job.cancelled_mono = now
        self.stats["jobs_cancelled"] += 1
        if job.callback_state == "held":
            if not self.config.callback_on_cancel:
                job.callback_state = "none"
        elif self.config.callback_on_cancel:
            self.webhooks.schedule(job)
        else:
            self.webhooks.unschedule(job)

    # ----- provider hooks ----------------------------------------------------------------

    @abstractmethod
    def error_response(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """Answer an error in the provider's own body shape."""

    @abstractmethod
    def refused_submit(self) -> web.Response:
        """Answer a submit under `submit_mode: refuse`: the provider's documented client-error
        refusal (a 4xx other than 429), whatever the request."""

    def unavailable_submit(self, status: int) -> web.Response:
        """Answer a submit under `submit_mode: unavailable` with `status` (a 5xx)."""
        return self.error_response(status, UNAVAILABLE_MESSAGE)

    @abstractmethod
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the provider's API routes."""

    @abstractmethod
    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the credentials in force (see `@authenticated`)."""

    def add_control_routes(self, router: web.UrlDispatcher) -> None:
        """Let a provider add its own `/_sim` routes before the API's catch-all ones."""

    def on_reset(self) -> None:
        """Let a provider clear its own indexes on reset."""

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
            "submit_count": self.store.submit_count(job),
            "callback_url": job.callback_url,
            "callback_state": job.callback_state,
            "callback_attempts": job.callback_attempts,
            "callbacks_delivered": job.callbacks_delivered,
        }

    # ----- application -------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Build the aiohttp application: control routes first, then the provider's API."""

        @web.middleware
        async def api_load(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Apply the load faults to API requests (never to controls, files or JWKS): a 429
            over `max_concurrent_requests`, else counted in flight through `slow_seconds` and
            the handler, so that a slow answer holds its place. A request whose client leaves
            during `slow_seconds` is never handled (counted as `abandoned_requests`)."""
            if request.path.startswith((CONTROL_PREFIX, "/.well-known")):
                return await handler(request)
            refusal = self.faults.over_capacity(self.in_flight.count)
            if refusal is not None:
                return refusal
            with self.in_flight.tracking():
                if self.config.slow_seconds > 0 and not await self.pauses.delay(
                    time.monotonic(), lambda: self.config.slow_seconds, client_gone(request)
                ):
                    self.stats["abandoned_requests"] += 1
                    return web.Response(status=499)  # never written: nobody is listening
                return await handler(request)

        app = web.Application(middlewares=[api_load, answer_early])
        app[SIMULATOR_KEY] = self
        ControlApi(self).add_routes(app.router)
        self.add_control_routes(app.router)
        self.add_routes(app.router)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        # Runs before aiohttp waits for in-flight handlers: end every injected delay first.
        del app
        self.pauses.interrupt()
        self.silence.let_go()
        await self.webhooks.shutdown()

    async def _on_cleanup(self, app: web.Application) -> None:
        del app
        await self.webhooks.close()


SIMULATOR_KEY = web.AppKey("simulator", ProviderSimulator)


def get_simulator(app: web.Application) -> ProviderSimulator[Any]:
    """Return the simulator object behind an app built by one of the factories."""
    return app[SIMULATOR_KEY]
