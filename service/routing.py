"""Which provider a routed job tries next (CONTRACT.md, Routing across providers).

A routed model (`ROUTES`: `flux-1-krea-dev=fal,scenario`) is tried on its providers in the
route's order, one attempt at a time, and only forward: the next attempt goes to a provider
after the current one, so a provider that may still hold a live attempt is never asked again.
A provider is passed over when it cannot serve the input (schemas.routing), has no credentials
on this instance, or its circuit is open (service.workers.circuit). Whether a failure moves the
job on is the runner's and the callback receiver's decision (`fails_over`); this module only
chooses where to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.events import EventSource
from schemas.jobs import JobError, JobStatus
from schemas.routing import RoutedInput, servable_providers, translate
from service.providers.base import JobRecord, Observation
from service.store.base import JobStore, NextAttempt

#: Error codes of a failure that is the content's or the request's: final, never retried on
#: another provider (the same prompt would be refused there too, or the input is at fault).
FINAL_ERROR_CODES = frozenset({"content_refused", "input_refused"})


def fails_over(error: JobError | None) -> bool:
    """Whether a failed attempt with this error moves a routed job to its next provider."""
    return error is None or error.code not in FINAL_ERROR_CODES


def health_of(observation: Observation) -> bool | None:
    """What a job's news says of its provider, for its circuit: a success is healthy, a failure
    that another provider might not have is not, anything else says nothing."""
    if observation.status is JobStatus.SUCCEEDED:
        return True
    if observation.status is JobStatus.FAILED:
        return False if fails_over(observation.error) else None
    return None


class Gate(Protocol):
    """A provider's circuit as the router sees it: may a new attempt go there now?"""

    def allow(self) -> bool: ...


@dataclass(frozen=True)
class Plan:
    """A routed job's first attempt and what the `accepted` event records of the choice."""

    first: NextAttempt
    event_data: dict[str, Any]


class NoProvider(Exception):
    """No provider on the route can take the job; `reasons` says why, per provider."""

    def __init__(self, model: str, reasons: dict[str, str]) -> None:
        super().__init__(f"no provider on the route of {model} can serve this input")
        self.reasons = reasons


class Router:
    """The routes of this instance, the providers it has credentials for, and their circuits."""

    def __init__(
        self,
        routes: Mapping[str, Sequence[str]],
        *,
        enabled: frozenset[str],
        timeout_s: Callable[[str], float],
        circuits: Callable[[str], Gate] | None = None,
    ) -> None:
        self.routes = {model: tuple(providers) for model, providers in routes.items()}
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.circuits = circuits

    def models(self) -> list[str]:
        return sorted(self.routes)

    def plan(self, model: str, common: RoutedInput) -> Plan:
        """The first attempt of a new routed job (raises NoProvider)."""
        route = self.routes[model]
        first, passed_over = self._choose(model, route, common)
        if first is None:
            raise NoProvider(model, passed_over)
        data: dict[str, Any] = {"route": list(route)}
        if passed_over:
            data["passed_over"] = passed_over
        return Plan(first, data)

    def next_attempt(self, job: JobRecord) -> tuple[NextAttempt | None, dict[str, str]]:
        """The attempt after `job`'s current one (None: the route is exhausted), and the
        providers passed over on the way, with why."""
        assert job.route is not None and job.route_input is not None, "a routed job"
        route = self.routes.get(job.route, ())
        later = route[route.index(job.provider) + 1 :] if job.provider in route else ()
        return self._choose(job.route, later, RoutedInput.model_validate(job.route_input))

    def _choose(
        self, model: str, candidates: Sequence[str], common: RoutedInput
    ) -> tuple[NextAttempt | None, dict[str, str]]:
        servable, passed_over = servable_providers(model, list(candidates), common)
        for provider in servable:
            if provider not in self.enabled:
                passed_over[provider] = "provider disabled: no credentials on this instance"
                continue
            if self.circuits is not None and not self.circuits(provider).allow():
                passed_over[provider] = "circuit open: the provider failed repeatedly"
                continue
            translation = translate(model, provider, common)
            return NextAttempt(
                provider=translation.provider,
                model=translation.model,
                input=translation.input,
                adjustments=translation.adjustments,
                timeout_s=self.timeout_s(provider),
            ), passed_over
        return None, passed_over


async def fail_over(
    store: JobStore,
    router: Router,
    job: JobRecord,
    *,
    error: JobError,
    source: EventSource,
    data: dict[str, Any] | None = None,
) -> str:
    """Ends `job`'s current attempt with `error` and starts its next one ('next'), or fails the
    job with `error` when the route is exhausted ('failed'); 'stale' when the attempt was no
    longer current (another instance moved the job on first)."""
    assert job.attempt is not None, "a routed job"
    next_attempt, passed_over = router.next_attempt(job)
    details = {**(data or {}), **({"passed_over": passed_over} if passed_over else {})}
    return await store.fail_over_attempt(
        job.id, attempt=job.attempt, source=source, error=error, data=details,
        next_attempt=next_attempt,
    )  # fmt: skip
