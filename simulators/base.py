"""The base of the three simulators: it wires the parts together and serves them.

Each part has one job: `config` (settings and faults in force), `faults` (which fault strikes
a request or a job), `jobs` (the lazy job model and the job store), `webhooks` (delivery with
retries), `control` (the `/_sim` routes), `images` (the served outputs). A provider subclass
adds its API routes, auth, error shape and rendering; `handlers` has the decorators its
route handlers share (auth, fault gates, counters).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic

from aiohttp import web

from simulators.config import C, ConfigState
from simulators.control import ControlApi
from simulators.faults import Faults
from simulators.jobs import JobPlan, JobStore, Lifecycle, SimJob
from simulators.pauses import Pauses
from simulators.webhooks import WebhookSender
from simulators.wire import CONTROL_PREFIX, iso_ms

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
            rate_limit_message=self.rate_limit_message,
        )
        self.webhooks = WebhookSender(
            self.config_state,
            self.stats,
            self.pauses,
            self.render_callback,
            default_attempts=self.default_callback_attempts,
        )

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
        """Merge `patch` into the config (validated as a whole); used by `POST /_sim/config`."""
        return self.config_state.update(patch)

    def reset(self) -> None:
        """Forget jobs, stats and faults: back to the config the simulator was built with."""
        self.webhooks.reset()
        self.pauses.interrupt()
        self.store.clear()
        self.stats.clear()
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

    def next_wall_us(self) -> int:
        """Wall-clock creation time of a new job in whole microseconds, strictly increasing."""
        return self.store.next_wall_us()

    def plan_job(self, prompt: str) -> JobPlan:
        """Decide a new job's timing and faults from the config and the prompt's markers."""
        return self.faults.plan_job(prompt)

    # ----- job lifecycle -----------------------------------------------------------------

    def register(self, job: SimJob) -> None:
        """Store a new job and count its submission (repeats share a fingerprint)."""
        repeat = self.store.add(job)
        self.stats["jobs_created"] += 1
        if repeat:
            self.stats["duplicate_submits"] += 1

    def schedule_callback(self, job: SimJob) -> None:
        """Arrange delivery of the job's webhook when it reaches its terminal state."""
        self.webhooks.schedule(job)

    async def deliver_callbacks(self, job: SimJob) -> None:
        """Deliver (or drop) the job's webhook now, plus the configured duplicates."""
        await self.webhooks.deliver(job)

    def cancel_job(self, job: SimJob, now: float) -> None:
        """Cancel a pending job now; its webhook follows unless `callback_on_cancel` is off."""
        job.cancelled_mono = now
        self.stats["jobs_cancelled"] += 1
        if self.config.callback_on_cancel:
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
        async def slow_down(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Apply the `slow_seconds` fault to API requests (never to controls or JWKS)."""
            slow = self.config.slow_seconds
            if slow > 0 and not request.path.startswith((CONTROL_PREFIX, "/.well-known")):
                await self.pauses.pause(slow)
            return await handler(request)

        app = web.Application(middlewares=[slow_down])
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
        await self.webhooks.shutdown()

    async def _on_cleanup(self, app: web.Application) -> None:
        del app
        await self.webhooks.close()


SIMULATOR_KEY = web.AppKey("simulator", ProviderSimulator)


def get_simulator(app: web.Application) -> ProviderSimulator[Any]:
    """Return the simulator object behind an app built by one of the factories."""
    return app[SIMULATOR_KEY]
