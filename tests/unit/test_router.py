"""Where a routed job goes next: the route's order, forward only, passing over the providers
that cannot serve the input, are disabled here, or whose circuit is open."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.jobs import JobError, JobStatus
from schemas.routing import RoutedInput
from service.providers.base import JobRecord
from service.routing import NoProvider, Router, fails_over

ROUTE = {"flux-1-krea-dev": ("fal", "scenario")}


class Gate:
    def __init__(self, open_for: set[str]) -> None:
        self.open_for = open_for

    def of(self, provider: str) -> Gate:
        self.provider = provider
        return self

    def allow(self) -> bool:
        return self.provider not in self.open_for


def router(*, enabled: set[str] | None = None, open_circuits: set[str] | None = None) -> Router:
    gate = Gate(open_circuits or set())
    return Router(
        ROUTE, enabled=frozenset(enabled or {"fal", "scenario"}),
        timeout_s=lambda provider: {"fal": 10.0, "scenario": 20.0}[provider], circuits=gate.of,
    )  # fmt: skip


def routed_job(provider: str, common: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id="j", provider=provider, model="m", status=JobStatus.RUNNING, provider_job_id="p",
        input={}, provider_state={}, cancel_requested=False, submit_started_at=None,
        submitted_at=None, attempts=0, created_at=datetime.now(UTC),
        route="flux-1-krea-dev", attempt=1, route_input=common,
    )  # fmt: skip


def test_the_first_attempt_is_the_first_provider_that_can_take_the_job() -> None:
    plan = router().plan("flux-1-krea-dev", RoutedInput(prompt="x"))
    assert (plan.first.provider, plan.first.model, plan.first.timeout_s) == (
        "fal", "fal-ai/flux/krea", 10.0
    )  # fmt: skip
    assert plan.event_data == {"route": ["fal", "scenario"]}
    guided = router().plan("flux-1-krea-dev", RoutedInput(prompt="x", guidance=0.5))
    assert guided.first.provider == "scenario"
    assert "guidance" in guided.event_data["passed_over"]["fal"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"enabled": {"scenario"}}, "no credentials"), ({"open_circuits": {"fal"}}, "circuit open")],
)
def test_a_disabled_provider_or_an_open_circuit_is_passed_over(
    options: dict[str, Any], reason: str
) -> None:
    plan = router(**options).plan("flux-1-krea-dev", RoutedInput(prompt="x"))
    assert plan.first.provider == "scenario" and reason in plan.event_data["passed_over"]["fal"]


def test_nothing_left_on_the_route_is_no_provider() -> None:
    with pytest.raises(NoProvider) as raised:
        router(enabled={"fal"}).plan("flux-1-krea-dev", RoutedInput(prompt="x", guidance=0.5))
    assert set(raised.value.reasons) == {"fal", "scenario"}


def test_the_next_attempt_only_goes_forward_along_the_route() -> None:
    following, _ = router().next_attempt(
        routed_job("fal", {"prompt": "x", "width": 512, "height": 512})
    )
    assert following is not None and following.provider == "scenario"
    assert following.input["aspectRatio"] == "1:1"
    assert router().next_attempt(routed_job("scenario", {"prompt": "x"})) == (None, {})


def test_a_content_refusal_never_fails_over() -> None:
    assert not fails_over(JobError(code="content_refused", message="flagged"))
    assert fails_over(JobError(code="provider_failed", message="oom"))
    assert fails_over(None)
