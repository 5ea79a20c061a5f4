"""The job runner: claims due jobs and does their next action on the provider.

One loop per instance. It claims due jobs by lease on the job rows (`FOR UPDATE SKIP LOCKED`, so
any number of instances share the work with PostgreSQL as the only coordinator) and, per job,
does what its state calls for:

- accepted (or a routed job's later attempt), submission not started: submit (at most once;
  see `_submit`);
- accepted, submission started but its answer never recorded: its outcome is unknown, settled
  by asking the provider or by its callback (see `_settle_unknown`, service.workers.unknown);
- cancel requested and not yet sent: send the cancel to the provider;
- otherwise in flight: ask the provider (`fetch_status`) and record it as a `poll` observation.

A routed job (CONTRACT.md, Routing across providers) moves to its next provider instead of
failing when its attempt's provider is disabled, refuses the submission, stays unavailable
through its retries, fails the job for a reason other than the content, or sends no news before
the attempt's deadline and the attempt is known not to be live (never sent, or its cancel was
confirmed): `_fail_over` (service.routing chooses where to).

Work per provider runs under a concurrency limit that adapts to the provider's answers
(service.workers.adaptive_limit: it grows while the provider answers and halves on 429), and
every answer and failure feeds the provider's circuit (service.workers.circuit), which routed
jobs consult before choosing it. The loop sleeps until the next job is due, or until it is
woken (a job was created or a cancel requested on this instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from schemas.events import EventSource
from schemas.jobs import JobError, JobStatus
from schemas.model_inputs import MODELS
from service import tracing
from service.callback_tokens import callback_url, hash_callback_token, new_callback_token
from service.errors import DatabaseUnavailable
from service.logs import get_logger
from service.metrics import DUE_LAG, OBSERVATIONS, PROVIDER_REQUESTS, WEBHOOK_MISSES
from service.providers.base import (
    JobRecord,
    Observation,
    ProviderAdapter,
    ProviderError,
    ProviderRateLimited,
    state_json,
)
from service.routing import Router, fail_over, fails_over, health_of
from service.store import CompletionTimes, JobStore, Schedule
from service.workers.adaptive_limit import AdaptiveLimit, Slot
from service.workers.circuit import Circuits
from service.workers.claim_loop import ClaimLoop
from service.workers.decide import Action, decide
from service.workers.schedule import (
    DEFAULT_TIMINGS,
    CompletionWindow,
    GraceRule,
    ProviderTiming,
)
from service.workers.unknown import Judgement, judge, submission_window

#: When an effect left the job due next (None: not due, e.g. terminal).
Next = datetime | None

#: The concurrency slot the job being handled holds: where its provider's answers are reported.
_SLOT: ContextVar[Slot | None] = ContextVar("provider_slot", default=None)
#: The longest pause a provider's Retry-After imposes on this instance's new requests to it.
MAX_RETRY_AFTER_PAUSE_S = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


def _later(seconds: float) -> datetime:
    return _now() + timedelta(seconds=seconds)


class JobRunner(ClaimLoop[JobRecord]):
    """Claims due jobs and acts on them; several runners (instances) share one database."""

    def __init__(
        self,
        *,
        store: JobStore,
        adapters: Mapping[str, ProviderAdapter],
        callback_base_url: str,
        owner: str | None = None,
        timings: Mapping[str, ProviderTiming] | None = None,
        batch_size: int = 100,
        lease_seconds: float = 60.0,
        concurrency_per_provider: int = 32,
        max_concurrency_per_provider: int = 128,
        circuits: Circuits | None = None,
        idle_wait_s: float = 1.0,
        grace_rule: GraceRule | None = None,
        grace_refresh_s: float = 60.0,
        router: Router | None = None,
        deadline_check_s: float = 10.0,
    ) -> None:
        super().__init__(
            name="runner",
            batch_size=batch_size,
            idle_wait_s=idle_wait_s,
            log=get_logger("service.runner"),
        )
        self.store = store
        self.adapters = adapters
        self.callback_base_url = callback_base_url.rstrip("/")
        self.owner = owner or f"runner-{secrets.token_hex(6)}"
        self.timings = {**DEFAULT_TIMINGS, **(timings or {})}
        self.lease_seconds = lease_seconds
        maximum = max(max_concurrency_per_provider, concurrency_per_provider)
        self._limits = {
            name: AdaptiveLimit(name, initial=concurrency_per_provider, maximum=maximum)
            for name in adapters
        }
        self.circuits = circuits
        self.router = router
        # The last look at a job past its deadline is bounded: a provider that holds status
        # requests open must not hold the deadline's action for the client's whole timeout.
        self.deadline_check_s = deadline_check_s
        self.grace_rule = grace_rule or GraceRule()
        self.grace_refresh_s = grace_refresh_s
        # (provider, model) -> (its recent completion times, loop time they were read)
        self._observed: dict[tuple[str, str], tuple[CompletionTimes, float]] = {}

    async def claim(self) -> list[JobRecord]:
        jobs = await self.store.claim_due(
            owner=self.owner, limit=self.batch_size, lease_seconds=self.lease_seconds
        )
        claimed_at = _now()
        for job in jobs:
            if job.due_at is not None:
                DUE_LAG.labels(provider=job.provider).observe(
                    max((claimed_at - job.due_at).total_seconds(), 0.0)
                )
        return jobs

    async def next_due(self) -> datetime | None:
        return await self.store.next_due_at()

    async def handle(self, job: JobRecord) -> None:
        await self._handle_limited(job)

    async def _handle_limited(self, job: JobRecord) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id, provider=job.provider)
        adapter = self.adapters.get(job.provider)
        if adapter is None and self._routed(job) and job.submit_started_at is None:
            await self._fail_over(
                job, code="provider_disabled",
                message=f"{job.provider} has no credentials on this instance",
            )  # fmt: skip
            return
        if adapter is None:
            # This instance has no credentials for the provider; another instance may.
            self._log.warning("runner_provider_disabled")
            await self.store.reschedule(job.id, owner=self.owner, at=_later(60))
            return
        try:
            async with self._limits[job.provider].slot() as slot:
                if self.stopping:  # shutting down: not started, its lease is released instead
                    return
                token = _SLOT.set(slot)
                try:
                    when = await self._act_traced(decide(job, _now()), job, adapter)
                finally:
                    _SLOT.reset(token)
            if when is not None:  # committed: wake the loop if it is due before the planned wake
                self.wake_if_sooner(when)
        except DatabaseUnavailable:
            # The lease runs out and the job is claimed again once the database is back.
            self._log.warning("runner_job_deferred_database_unavailable")
        except Exception:
            self._log.exception("runner_job_crashed")
            with contextlib.suppress(Exception):
                await self.store.reschedule(job.id, owner=self.owner, at=_later(30))

    async def _act_traced(self, action: Action, job: JobRecord, adapter: ProviderAdapter) -> Next:
        """`_act` in a span of the job's trace named by the action (`job.submit`, `job.poll`...),
        whichever instance created the job."""
        if action is Action.NOTHING:
            return None
        with tracing.job_span(f"job.{action.value}", job):
            return await self._act(action, job, adapter)

    async def _act(self, action: Action, job: JobRecord, adapter: ProviderAdapter) -> Next:
        """Does the effect `decide` chose (not NOTHING); returns when the job is next due (None:
        not due)."""
        if action is Action.EXPIRE:
            return await self._expire(job, adapter)
        if action is Action.SUBMIT:
            return await self._submit(job, adapter)
        if action is Action.RECORD_UNKNOWN:
            return await self._unknown(job, reason="submission started, answer never recorded")
        if action is Action.SETTLE_UNKNOWN:
            return await self._settle_unknown(job, adapter)
        if action is Action.CANCEL:
            return await self._cancel(job, adapter)
        return await self._poll(job, adapter)

    async def _reschedule(self, job: JobRecord, seconds: float) -> Next:
        """Gives the job back, due in `seconds` (never past its deadline)."""
        when = self._at(job, seconds)
        return when if await self.store.reschedule(job.id, owner=self.owner, at=when) else None

    def _at(self, job: JobRecord, seconds: float) -> datetime:
        """`seconds` from now, but never past the job's hard deadline (so it is acted on then)."""
        when = _later(seconds)
        if job.deadline_at is not None:
            when = min(when, job.deadline_at)
        return when

    async def _completion_times(self, job: JobRecord) -> CompletionTimes:
        """The model's observed completion times, read at most every `grace_refresh_s` (every
        5 s while the model has too little history for the rules that use them)."""
        key = (job.provider, job.model)
        cached = self._observed.get(key)
        loop_now = asyncio.get_running_loop().time()
        refresh_s = self.grace_refresh_s
        if cached is not None and cached[0].samples < self.grace_rule.min_samples:
            refresh_s = min(refresh_s, 5.0)
        if cached is None or loop_now - cached[1] > refresh_s:
            cached = (await self.store.completion_times(job.provider, job.model), loop_now)
            self._observed[key] = cached
        return cached[0]

    async def _observed_wait_s(self, job: JobRecord, *, default_s: float) -> float:
        """How long news of this job may take, from its model's observed completion times
        (GraceRule); `default_s` until there is enough history."""
        times = await self._completion_times(job)
        return self.grace_rule.grace(samples=times.samples, p95_s=times.p95_s, default_s=default_s)

    async def _poll_delay_s(self, job: JobRecord, timing: ProviderTiming, checks: int) -> float:
        """The next status request of a job. A polled provider's (Scenario's) lands in its
        model's completion window (CompletionWindow) once the model has history; otherwise,
        and for webhook providers, the policy's backoff."""
        backoff = timing.poll.delay(checks)
        if timing.webhook_grace_s is not None or job.submitted_at is None:
            return backoff
        window = await self._window(job)
        if window is None:
            return backoff
        elapsed = (_now() - job.submitted_at).total_seconds()
        return window.next_poll_s(elapsed_s=elapsed, backoff_s=backoff, max_s=timing.poll.max_s)

    async def _window(self, job: JobRecord) -> CompletionWindow | None:
        times = await self._completion_times(job)
        return self.grace_rule.window(samples=times.samples, p10_s=times.p10_s, p95_s=times.p95_s)

    async def _first_check_s(self, job: JobRecord, timing: ProviderTiming) -> float:
        """Scenario: a quick first poll, or the start of its model's completion window.
        Webhook providers: the grace their webhook gets, from the model's observed completion
        times."""
        if timing.webhook_grace_s is None:
            first = timing.poll.delay(0)
            window = await self._window(job)
            if window is not None:  # the usual first look, or the window if it opens sooner
                return min(first, window.next_poll_s(elapsed_s=0.0, backoff_s=first, max_s=first))
            return first
        return await self._observed_wait_s(job, default_s=timing.webhook_grace_s)

    def _routed(self, job: JobRecord) -> bool:
        return job.route is not None and self.router is not None

    def _answered(self, provider: str, *, healthy: bool | None = None) -> None:
        """The provider answered: one success toward a larger concurrency limit; `healthy`
        True or False also counts for or against its circuit (None: says nothing of it)."""
        slot = _SLOT.get()
        if slot is not None:
            slot.succeeded()
        if self.circuits is not None and healthy is not None:
            self.circuits[provider].record(healthy=healthy)

    def _failed(self, provider: str, exc: ProviderError) -> None:
        """A request to the provider failed: a 429 halves its concurrency limit (and pauses new
        requests for its Retry-After); any failure counts against its circuit."""
        tracing.failed(exc)
        slot = _SLOT.get()
        if slot is not None and isinstance(exc, ProviderRateLimited):
            pause = min(exc.retry_after, MAX_RETRY_AFTER_PAUSE_S) if exc.retry_after else None
            slot.rate_limited(pause)
        if self.circuits is not None:
            self.circuits[provider].record_failure()

    def _circuit_open_for(self, job: JobRecord) -> bool:
        """A routed job's attempt about to be sent for the first time, to a provider whose
        circuit does not let it through now (a half-open circuit lets one probe through)."""
        return (
            self._routed(job)
            and job.submit_attempts == 0
            and self.circuits is not None
            and not self.circuits[job.provider].allow()
        )

    def _moves_on(self, job: JobRecord, observation: Observation) -> bool:
        """A routed job's attempt failed for a reason another provider may not have."""
        return (
            self._routed(job)
            and observation.status is JobStatus.FAILED
            and fails_over(observation.error)
        )

    async def _fail_over(
        self,
        job: JobRecord,
        *,
        code: str,
        message: str,
        detail: Any = None,
        data: dict[str, Any] | None = None,
        source: EventSource = "system",
    ) -> Next:
        """A routed job's attempt failed in a way another provider may not: the next attempt
        starts (due now), or the job fails when the route is exhausted."""
        assert self.router is not None
        error = JobError(code=code, message=message, provider_detail=detail)
        outcome = await fail_over(
            self.store, self.router, job, error=error, source=source, data=data
        )
        self._log.warning("attempt_failed", code=code, message=message, outcome=outcome)
        return _now() if outcome == "next" else None

    @staticmethod
    def _provider_request(job: JobRecord) -> dict[str, Any]:
        """The request the provider gets: the job's input with the model's defaults."""
        model = MODELS[(job.provider, job.model)].input_model
        return model.model_validate(job.input).provider_request()

    # --- submission ---------------------------------------------------------------------------

    async def _submit(self, job: JobRecord, adapter: ProviderAdapter) -> Next:
        """At most once: the start is committed (with the callback token's hash) before the
        request leaves, and only a request that certainly was not sent is ever sent again."""
        timing = self.timings[job.provider]
        if self._circuit_open_for(job) and self.router is not None:
            following, _ = self.router.next_attempt(job)
            if following is not None:  # skipped while its circuit is open, if another can go
                return await self._fail_over(
                    job, code="circuit_open",
                    message=f"{job.provider} failed repeatedly: skipped for a while",
                )  # fmt: skip
        # Everything the request needs is ready before the start is committed, and the start is
        # committed only holding a concurrency slot: "started" means "leaving now", so a crash
        # leaves unknown only what may really have left. Concurrent begins share a batch.
        request = self._provider_request(job)
        token = new_callback_token()
        url = callback_url(
            self.callback_base_url, provider=job.provider, job_id=job.id, token=token
        )
        outcome = await self.store.begin_submission(
            job.id, owner=self.owner, token_hash=hash_callback_token(token), request=request
        )
        if outcome != "go":
            self._log.info("submission_skipped", outcome=outcome)
            return None
        try:
            PROVIDER_REQUESTS.labels(provider=job.provider, operation="submit").inc()
            submission = await adapter.submit(job, request=request, callback_url=url)
        except ProviderError as exc:
            self._failed(job.provider, exc)
            verdict = adapter.submit_policy.classify(exc)  # the provider's, not the runner's
            if verdict == "retry":
                retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
                return await self._retry_submission(job, timing, exc, retry_after=retry_after)
            if verdict == "final" and self._routed(job):
                return await self._fail_over(
                    job, code="provider_rejected", message=str(exc), detail=exc.detail,
                    data={"status": exc.status},
                )  # fmt: skip
            if verdict == "final":
                return await self._fail(
                    job,
                    code="provider_rejected",
                    message=str(exc),
                    detail=exc.detail,
                    data={"request": request},
                )
            return await self._unknown(job, reason=str(exc), detail=exc.detail)
        self._answered(job.provider, healthy=True)
        first_check = await self._first_check_s(job, timing)
        submitted = Observation(
            JobStatus.SUBMITTED,
            provider_status=submission.provider_status,
            provider_job_id=submission.provider_job_id,
            data={
                "request": request,
                "provider_job_id": submission.provider_job_id,
                "provider_status": submission.provider_status,
                "first_check_s": round(first_check, 3),
            },
        )
        when = self._at(job, first_check)
        result = await self.store.apply_observation(
            job.id,
            submitted,
            source="system",
            record_ignored=True,
            provider_state=state_json(submission.provider_state),
            schedule=Schedule(self.owner, when),
        )
        self._log.info(
            "job_submitted", provider_job_id=submission.provider_job_id, applied=result.applied
        )
        tracing.annotate({"job.provider_job_id": submission.provider_job_id})
        return when

    async def _retry_submission(
        self,
        job: JobRecord,
        timing: ProviderTiming,
        exc: ProviderError,
        *,
        retry_after: float | None,
    ) -> Next:
        attempts = job.submit_attempts + 1  # begin_submission counted this attempt
        if attempts >= timing.retry.max_attempts and self._routed(job):
            return await self._fail_over(
                job, code="provider_unavailable", message=str(exc), detail=exc.detail,
                data={"status": exc.status, "submissions": attempts},
            )  # fmt: skip
        if attempts >= timing.retry.max_attempts:
            return await self._fail(
                job, code="provider_unavailable", message=str(exc), detail=exc.detail
            )
        delay = timing.retry.delay(attempts, retry_after=retry_after)
        self._log.info(
            "submission_retry_scheduled", attempt=attempts, delay_s=round(delay, 3), error=str(exc)
        )
        when = self._at(job, delay)
        await self.store.reschedule(
            job.id,
            owner=self.owner,
            at=when,
            clear_submission=True,  # certainly not sent (or refused with 429): safe to send again
            event_type="submission_retry_scheduled",
            data={
                "attempt": attempts,
                "delay_s": round(delay, 3),
                "reason": str(exc),
                "status": exc.status,
            },
        )
        return when

    async def _unknown(self, job: JobRecord, *, reason: str, detail: Any = None) -> Next:
        """The provider may have created the job. Recorded once; the job is then settled by
        `_settle_unknown`, after a short delay (a provider's list may lag its answers)."""
        timing = self.timings[job.provider]
        self._log.warning("submission_outcome_unknown", reason=reason)
        when = self._at(job, timing.lookup.delay(0))
        await self.store.record_submission_unknown(
            job.id, owner=self.owner, next_action_at=when, data={"reason": reason, "detail": detail}
        )
        return when

    async def _settle_unknown(self, job: JobRecord, adapter: ProviderAdapter) -> Next:
        """Never sent twice, never bound by a guess (service.workers.unknown): the provider's
        list of jobs created in the submission's window says whether it holds this job; without
        a list (fal) the callback that carries the job's token is awaited, as long as the
        model's completions take, then the job fails with submission_outcome_unknown."""
        timing = self.timings[job.provider]
        assert job.submit_started_at is not None
        since, until = submission_window(job.submit_started_at)
        try:
            PROVIDER_REQUESTS.labels(provider=job.provider, operation="list").inc()
            listed = await adapter.list_jobs_since(
                job, request=self._provider_request(job), since=since, until=until
            )
        except ProviderError as exc:
            self._log.warning("submission_lookup_failed", error=str(exc))
            return await self._reschedule(job, timing.lookup.delay(job.attempts))
        if listed is None:
            return await self._await_binding_callback(job, timing)
        bound = await self.store.bound_provider_job_ids(
            job.provider, [listed_job.provider_job_id for listed_job in listed]
        )
        judgement = judge(
            listed,
            bound_elsewhere=bound,
            now=_now(),
            callback_settle=timedelta(seconds=timing.callback_settle_s),
        )
        data = {**judgement.as_data(), "listed": len(listed), "window": [since.isoformat(), until.isoformat()]}  # fmt: skip
        self._log.info("submission_lookup", **data)
        return await self._follow_judgement(job, timing, judgement, data)

    async def _follow_judgement(
        self, job: JobRecord, timing: ProviderTiming, judgement: Judgement, data: dict[str, Any]
    ) -> Next:
        if judgement.verdict == "send":
            resent = await self.store.resend_unsent_submission(job.id, owner=self.owner, data=data)
            return _now() if resent else None
        if judgement.verdict == "bind":
            assert judgement.provider_job_id is not None
            when = self._at(job, await self._first_check_s(job, timing))
            if await self.store.bind_listed_submission(
                job.id, provider=job.provider, provider_job_id=judgement.provider_job_id,
                owner=self.owner, next_action_at=when, data=data,
            ):  # fmt: skip
                return when
            return await self._reschedule(job, timing.lookup.delay(0))  # another job took it
        if judgement.verdict == "wait":
            return await self._reschedule(job, timing.lookup.delay(job.attempts))
        return await self._fail(
            job,
            code="submission_outcome_unknown",
            message="the provider holds jobs from the submission's window that cannot be "
            "told apart, and none of them called back with this job's token",
            data=data,
        )

    async def _await_binding_callback(self, job: JobRecord, timing: ProviderTiming) -> Next:
        assert job.submit_started_at is not None
        wait_s = await self._observed_wait_s(job, default_s=timing.unknown_outcome_wait_s)
        until = job.submit_started_at + timedelta(seconds=wait_s)
        if _now() < until:
            return await self._reschedule(job, (until - _now()).total_seconds())
        return await self._fail(
            job,
            code="submission_outcome_unknown",
            message="the provider may or may not have accepted the job, and no callback with "
            f"this job's token came within {wait_s:.0f} s (the model's observed completion times)",
            data={"waited_s": round(wait_s, 3)},
        )

    async def _fail(
        self,
        job: JobRecord,
        *,
        code: str,
        message: str,
        detail: Any = None,
        data: dict[str, Any] | None = None,
    ) -> Next:
        self._log.warning("job_failed", code=code, message=message)
        failed = Observation(
            JobStatus.FAILED,
            error=JobError(code=code, message=message, provider_detail=detail),
            data={"code": code, **(data or {})},
        )
        await self.store.apply_observation(
            job.id, failed, source="system", record_ignored=True, schedule=Schedule(self.owner)
        )
        return None

    # --- cancel and status --------------------------------------------------------------------

    async def _cancel(self, job: JobRecord, adapter: ProviderAdapter) -> Next:
        timing = self.timings[job.provider]
        try:
            PROVIDER_REQUESTS.labels(provider=job.provider, operation="cancel").inc()
            outcome = await adapter.cancel(job)
        except ProviderError as exc:
            self._failed(job.provider, exc)
            self._log.warning("cancel_failed", error=str(exc))
            return await self._reschedule(job, timing.retry.delay(1))
        self._answered(job.provider)
        when = self._at(job, timing.after_cancel_s)
        await self.store.record_cancel_sent(
            job.id,
            owner=self.owner,
            provider_state=state_json(outcome.state),
            next_action_at=when,
            data={"accepted": outcome.accepted, "provider_answer": outcome.provider_answer},
        )
        self._log.info("cancel_sent", accepted=outcome.accepted)
        return when

    async def _poll(self, job: JobRecord, adapter: ProviderAdapter) -> Next:
        timing = self.timings[job.provider]
        delay = await self._poll_delay_s(job, timing, job.attempts)
        try:
            PROVIDER_REQUESTS.labels(provider=job.provider, operation="status").inc()
            observation = await adapter.fetch_status(job)
        except ProviderRateLimited as exc:
            self._failed(job.provider, exc)
            return await self._reschedule(job, max(exc.retry_after or 0, 1.0))
        except ProviderError as exc:
            self._failed(job.provider, exc)
            self._log.warning("poll_failed", error=str(exc))
            return await self._reschedule(job, delay)
        self._answered(job.provider, healthy=health_of(observation))
        if observation.status is None:
            return await self._reschedule(job, delay)
        if self._moves_on(job, observation):
            error = observation.error
            return await self._fail_over(
                job, code=error.code if error else "provider_failed",
                message=error.message if error else "the provider reported the job failed",
                detail=error.provider_detail if error else None, source="poll",
                data={"provider_status": observation.provider_status},
            )  # fmt: skip
        next_at = self._at(job, delay)
        # A webhook provider's terminal state first learned by poll means its webhook was lost
        # (or is late past the grace): recorded on the event and counted per provider.
        missed = timing.webhook_grace_s is not None and observation.status.is_terminal
        if missed:
            observation = replace(observation, data={**observation.data, "webhook_missed": True})
        result = await self.store.apply_observation(
            job.id, observation, source="poll", schedule=Schedule(self.owner, next_at)
        )
        OBSERVATIONS.labels(
            provider=job.provider, source="poll", applied=str(result.applied).lower()
        ).inc()
        observed = observation.status.value if observation.status else None
        tracing.annotate({"job.observed_status": observed, "job.applied": result.applied})
        if missed and result.applied:
            WEBHOOK_MISSES.labels(provider=job.provider).inc()
            self._log.warning("webhook_missed", provider_status=observation.provider_status)
        return (
            None if missed or (observation.status and observation.status.is_terminal) else next_at
        )

    async def _expire(self, job: JobRecord, adapter: ProviderAdapter) -> Next:
        """Past the hard deadline: one last look at the provider; if the job is still not done,
        it ends failed with provider_timeout, committed before the provider is asked to cancel
        (so the provider's own "cancelled" news, which may come at once, cannot pre-empt it)."""
        observation = None
        if job.provider_job_id is not None:
            try:
                async with asyncio.timeout(self.deadline_check_s):
                    observation = await adapter.fetch_status(job)
            except (ProviderError, TimeoutError) as exc:
                self._log.warning("deadline_check_failed", error=str(exc) or type(exc).__name__)
        ended = (
            observation is not None
            and observation.status is not None
            and (observation.status.is_terminal)
        )
        if ended and observation is not None and not self._moves_on(job, observation):
            await self.store.apply_observation(
                job.id, observation, source="poll", schedule=Schedule(self.owner)
            )
            return None
        if self._routed(job):
            return await self._expire_attempt(job, adapter, observation)
        await self._fail(
            job,
            code="provider_timeout",
            message="no provider news brought the job to an end before its deadline",
            data={"deadline_at": job.deadline_at.isoformat() if job.deadline_at else None},
        )
        await self._cancel_at_deadline(job, adapter)
        return None

    async def _cancel_at_deadline(
        self, job: JobRecord, adapter: ProviderAdapter
    ) -> dict[str, Any] | None:
        """Asks the provider to cancel a job past its deadline and records the answer
        (`cancel_sent`); returns it, or None when there was nothing to cancel or it failed."""
        if job.provider_job_id is None:
            return None
        try:
            PROVIDER_REQUESTS.labels(provider=job.provider, operation="cancel").inc()
            outcome = await adapter.cancel(job)
        except ProviderError as exc:
            self._log.warning("deadline_cancel_failed", error=str(exc))
            return None
        answer = {"accepted": outcome.accepted, "provider_answer": outcome.provider_answer}
        await self.store.record_event(
            job.id, type="cancel_sent", source="system", data={**answer, "reason": "deadline"}
        )
        return answer

    async def _expire_attempt(
        self, job: JobRecord, adapter: ProviderAdapter, last_look: Observation | None
    ) -> Next:
        """A routed attempt past its deadline moves on only when it cannot be live: never sent,
        reported ended (failed, not for its content), or its cancel confirmed by the provider.
        Otherwise the job fails provider_timeout, as a direct job does: never two live attempts."""
        code, message = "provider_timeout", "no provider news before the attempt's deadline"
        deadline = {"deadline_at": job.deadline_at.isoformat() if job.deadline_at else None}
        if job.submit_started_at is None or (
            last_look is not None and last_look.status is JobStatus.FAILED
        ):
            return await self._fail_over(job, code=code, message=message, data=deadline)
        answer = await self._cancel_at_deadline(job, adapter)
        if answer is not None and answer["accepted"]:
            return await self._fail_over(
                job, code=code, message=message, data={**deadline, "cancel": answer}
            )
        return await self._fail(
            job, code=code,
            message="no provider news before the attempt's deadline, and the provider did not "
            "confirm its cancel: the attempt may still be live, so no other provider is tried",
            data=deadline,
        )  # fmt: skip
