"""The runner's decisions, without a database: the in-memory store (held to the same contract
as PostgreSQL's by tests/store) and a scripted provider adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.jobs import JobCreate, JobOutput, JobStatus
from service.providers.base import (
    CancelOutcome,
    JobRecord,
    ListedJob,
    Observation,
    OutcomeUnknown,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    Submission,
    SubmitPolicy,
)
from service.store.memory import MemoryJobStore
from service.workers.decide import Action, decide
from service.workers.runner import JobRunner
from service.workers.schedule import PollPolicy, ProviderTiming, RetryPolicy

S = JobStatus
NOW = PollPolicy(first_s=0.0, factor=1.0, max_s=0.0, jitter=0.0)
TIMING = ProviderTiming(
    webhook_grace_s=None, poll=NOW, retry=RetryPolicy(base_s=0.0, max_s=0.0, max_attempts=3),
    lookup=NOW, unknown_outcome_wait_s=0.0,
)  # fmt: skip
DONE = Observation(S.SUCCEEDED, provider_status="success", outputs=[JobOutput(url="https://x/1")])


@dataclass
class ScriptedAdapter:
    """A provider whose answers the test writes: submit errors in turn, then statuses."""

    name: str = "scenario"
    submit_policy: SubmitPolicy = field(default_factory=SubmitPolicy)
    submit_errors: list[ProviderError] = field(default_factory=list)
    statuses: list[Observation] = field(default_factory=lambda: [DONE])
    listed: list[ListedJob] | None = None
    submits: int = 0

    async def submit(
        self, job: JobRecord, *, request: dict[str, Any], callback_url: str
    ) -> Submission:
        self.submits += 1
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        return Submission(provider_job_id=f"p-{self.submits}", provider_status="queued")

    async def fetch_status(self, job: JobRecord) -> Observation:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def parse_callback(
        self, job: JobRecord, headers: Mapping[str, str], body: bytes
    ) -> Observation:
        raise NotImplementedError

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        return CancelOutcome(accepted=True, provider_answer="ok")

    async def list_jobs_since(
        self, job: JobRecord, *, request: dict[str, Any], since: datetime, until: datetime
    ) -> list[ListedJob] | None:
        return self.listed

    async def aclose(self) -> None:
        return None


async def run_until_settled(
    store: MemoryJobStore, runner: JobRunner, job_id: str, *, turns: int = 20
) -> list[str]:
    """Claims and acts until the job is terminal (every action is due at once here)."""
    for _ in range(turns):
        job = await store.get_job(job_id)
        assert job is not None
        if job.status.is_terminal:
            break
        await runner.run_once()
        await runner.drain()
    return [e.type for e in await store.list_events(job_id)]


async def start(adapter: ScriptedAdapter) -> tuple[MemoryJobStore, JobRunner, str]:
    store = MemoryJobStore()
    runner = JobRunner(store=store, adapters={"scenario": adapter},
                       callback_base_url="http://svc", timings={"scenario": TIMING})  # fmt: skip
    request = JobCreate(provider="scenario", model="model_flux-krea-dev", input={"prompt": "x"})
    job = (await store.create_job(request, idempotency_key=None)).job
    return store, runner, job.id


async def test_a_job_is_submitted_once_then_polled_to_its_end() -> None:
    adapter = ScriptedAdapter(
        statuses=[Observation(S.RUNNING, provider_status="in-progress"), DONE]
    )
    store, runner, job_id = await start(adapter)
    types = await run_until_settled(store, runner, job_id)
    job = await store.get_job(job_id)
    assert job is not None and job.status is S.SUCCEEDED and job.provider_job_id == "p-1"
    assert adapter.submits == 1
    assert types.count("submission_started") == 1 and types.count("status_changed") == 4


async def test_a_rate_limited_submit_is_retried_then_fails_as_unavailable() -> None:
    limited = [ProviderRateLimited("429", retry_after=0.0) for _ in range(3)]
    adapter = ScriptedAdapter(submit_errors=limited)
    store, runner, job_id = await start(adapter)
    types = await run_until_settled(store, runner, job_id)
    job = await store.get_job(job_id)
    assert job is not None and job.error is not None and job.error.code == "provider_unavailable"
    assert adapter.submits == 3 and types.count("submission_retry_scheduled") == 2


async def test_a_refusal_is_final() -> None:
    adapter = ScriptedAdapter(submit_errors=[ProviderRejected("400", status=400, detail="bad")])
    store, runner, job_id = await start(adapter)
    await run_until_settled(store, runner, job_id)
    job = await store.get_job(job_id)
    assert job is not None and job.error is not None and job.error.code == "provider_rejected"
    assert job.error.provider_detail == "bad" and adapter.submits == 1


@pytest.mark.parametrize(
    ("listed", "submits", "status"),
    [
        ([], 2, S.SUCCEEDED),  # the list shows it never arrived: sent again
        ([ListedJob("p-mine", None, terminal=False, matches_request=True)], 1, S.SUCCEEDED),
        ([ListedJob("p-?", None, terminal=True, matches_request=None)], 1, S.FAILED),
        (None, 1, S.FAILED),  # no list, no callback within the wait
    ],
)
async def test_an_unknown_outcome_is_settled_by_the_providers_list(
    listed: list[ListedJob] | None, submits: int, status: S
) -> None:
    adapter = ScriptedAdapter(submit_errors=[OutcomeUnknown("no answer")], listed=listed)
    store, runner, job_id = await start(adapter)
    types = await run_until_settled(store, runner, job_id)
    job = await store.get_job(job_id)
    assert job is not None and job.status is status and adapter.submits == submits
    assert types.count("submission_outcome_unknown") == 1
    if status is S.FAILED:
        assert job.error is not None and job.error.code == "submission_outcome_unknown"


def test_decide_names_one_action_per_state() -> None:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": "j", "provider": "scenario", "model": "m", "status": S.ACCEPTED,
        "provider_job_id": None, "input": {}, "provider_state": {}, "cancel_requested": False,
        "submit_started_at": None, "submitted_at": None, "attempts": 0, "created_at": now,
        "deadline_at": now + timedelta(hours=1),
    }  # fmt: skip

    def record(**changes: Any) -> JobRecord:
        return JobRecord(**{**base, **changes})

    assert decide(record(), now) is Action.SUBMIT
    assert decide(record(submit_started_at=now), now) is Action.RECORD_UNKNOWN
    assert (
        decide(record(submit_started_at=now, submit_unknown_at=now), now) is Action.SETTLE_UNKNOWN
    )
    assert decide(record(status=S.RUNNING, cancel_requested=True), now) is Action.CANCEL
    assert decide(record(status=S.RUNNING), now) is Action.POLL
    assert decide(record(status=S.RUNNING, deadline_at=now), now) is Action.EXPIRE
    assert decide(record(status=S.FAILED, deadline_at=now), now) is Action.NOTHING
    # A routed job's later attempt is submitted whatever status an earlier one reached.
    later = {"route": "flux-1-krea-dev", "attempt": 2, "status": S.RUNNING}
    assert decide(record(**later), now) is Action.SUBMIT
    assert decide(record(**later, submit_started_at=now), now) is Action.RECORD_UNKNOWN
    assert decide(record(**later, provider_job_id="p"), now) is Action.POLL
