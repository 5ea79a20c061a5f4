"""One contract, two stores: every test here runs against PostgreSQL and against memory, so the
in-memory store that the runner's unit tests use behaves as the real one does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.jobs import JobCreate, JobError, JobOutput, JobStatus
from service.db.database import Database
from service.providers.base import Observation
from service.store import CompletionTimes, JobStore, Schedule, new_job_id
from service.store.base import NextAttempt
from service.store.memory import MemoryJobStore
from service.store.postgres import PostgresJobStore

S = JobStatus
ORDER = [S.ACCEPTED, S.SUBMITTED, S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELED]


@pytest.fixture(params=["postgres", "memory"])
async def store(request: pytest.FixtureRequest, database: Database) -> AsyncIterator[JobStore]:
    """Both stores; the memory one ignores the (fresh) database it is given."""
    implementation: JobStore = (
        PostgresJobStore(database) if request.param == "postgres" else MemoryJobStore()
    )
    yield implementation
    await implementation.close()


def create(prompt: str = "a lighthouse") -> JobCreate:
    return JobCreate(provider="krea", model="bfl/flux-1-dev", input={"prompt": prompt})


async def claimed(store: JobStore, owner: str = "w1") -> str:
    job = (await store.create_job(create(), idempotency_key=None)).job
    [record] = await store.claim_due(owner=owner, limit=10, lease_seconds=60)
    assert record.id == job.id
    return job.id


async def test_creation_is_idempotent_by_key(store: JobStore) -> None:
    first = await store.create_job(create(), idempotency_key="k")
    again = await store.create_job(create(), idempotency_key="k")
    assert first.created and not again.created
    assert again.job.id == first.job.id and again.request_hash == first.request_hash
    events = await store.list_events(first.job.id)
    assert [(e.seq, e.type, e.to_status) for e in events] == [(1, "status_changed", S.ACCEPTED)]


async def test_status_moves_only_forward_and_duplicates_are_recorded_apart(
    store: JobStore,
) -> None:
    job_id = (await store.create_job(create(), idempotency_key=None)).job.id
    outputs = [JobOutput(url="https://x/1.png", content_type="image/png", width=8, height=8)]
    assert (await store.apply_observation(job_id, Observation(S.RUNNING), source="poll")).applied
    done = Observation(S.SUCCEEDED, provider_job_id="p-1", outputs=outputs)
    assert (await store.apply_observation(job_id, done, source="webhook")).applied
    again = await store.apply_observation(job_id, done, source="webhook", record_ignored=True)
    stale = await store.apply_observation(job_id, Observation(S.QUEUED), source="poll")
    assert not again.applied and again.event_id is not None
    assert not stale.applied and stale.event_id is None
    job = await store.get_job(job_id)
    assert job is not None and job.status is S.SUCCEEDED and job.provider_job_id == "p-1"
    assert job.outputs == outputs and job.completed_at is not None
    events = await store.list_events(job_id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].type == "observation_ignored" and events[-1].data["reason"] == "duplicate"


@pytest.mark.parametrize("from_status", ORDER)
@pytest.mark.parametrize("to_status", ORDER)
async def test_the_transition_rule(store: JobStore, from_status: S, to_status: S) -> None:
    job_id = (await store.create_job(create(), idempotency_key=None)).job.id
    if from_status is not S.ACCEPTED:
        await store.apply_observation(job_id, Observation(from_status), source="system")
    result = await store.apply_observation(job_id, Observation(to_status), source="system")
    forward = ORDER.index(to_status) > ORDER.index(from_status) and not from_status.is_terminal
    rank = {S.FAILED: 4, S.CANCELED: 4, S.SUCCEEDED: 4}
    if from_status.is_terminal or (rank.get(to_status, 0) and rank.get(from_status, 0)):
        forward = False
    assert result.applied is forward


async def test_claims_lease_jobs_to_one_owner_until_released(store: JobStore) -> None:
    job_id = await claimed(store, "w1")
    assert await store.claim_due(owner="w2", limit=10, lease_seconds=60) == []
    soon = datetime.now(UTC) - timedelta(seconds=1)
    assert not await store.reschedule(job_id, owner="w2", at=soon)  # not w2's lease
    assert await store.reschedule(job_id, owner="w1", at=soon, event_type="x", data={"n": 1})
    [again] = await store.claim_due(owner="w2", limit=10, lease_seconds=60)
    assert again.id == job_id and again.attempts == 2
    assert [e.type for e in await store.list_events(job_id)][-1] == "x"


async def test_a_submission_begins_once_and_a_cancel_before_it_wins(store: JobStore) -> None:
    job_id = await claimed(store)
    assert await store.begin_submission(job_id, owner="w1", token_hash="h", request={}) == "go"
    assert await store.begin_submission(job_id, owner="w1", token_hash="h", request={}) == "skip"
    other = await claimed(store)
    assert (await store.request_cancel(other)).outcome == "canceled"  # nothing was sent
    record = await store.lookup(job_id)
    assert record is not None and record.submit_started_at is not None
    assert record.callback_token_hash == "h" and record.submit_attempts == 1


async def test_a_cancel_sent_is_recorded_even_when_the_job_ended_meanwhile(
    store: JobStore,
) -> None:
    """The provider's "cancelled" webhook may commit before the runner records the cancel it
    sent: the request is still part of the history, and the ended job gets no next action."""
    job_id = await claimed(store)
    await store.begin_submission(job_id, owner="w1", token_hash="h", request={})
    await store.apply_observation(
        job_id, Observation(S.SUBMITTED, provider_job_id="p-1"), source="system"
    )
    assert (await store.request_cancel(job_id)).outcome == "requested"
    await store.apply_observation(job_id, Observation(S.CANCELED), source="webhook")
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await store.record_cancel_sent(
        job_id, owner="w1", provider_state={}, next_action_at=later, data={"accepted": True}
    )
    events = await store.list_events(job_id)
    assert events[-1].type == "cancel_sent" and events[-1].data == {"accepted": True}
    assert await store.next_due_at() is None  # nothing left to do for the ended job


async def test_an_unknown_submission_is_recorded_once_then_resent_or_bound(
    store: JobStore,
) -> None:
    job_id = await claimed(store)
    await store.begin_submission(job_id, owner="w1", token_hash="h", request={})
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await store.record_submission_unknown(job_id, owner="w1", next_action_at=later, data={})
    assert not await store.record_submission_unknown(
        job_id, owner="w1", next_action_at=later, data={}
    )  # not leased any more, and already recorded
    assert (await store.lookup(job_id)).submit_unknown_at is not None  # type: ignore[union-attr]
    await store.reschedule(job_id, owner="nobody", at=later)
    twin = await claimed(store)
    await store.begin_submission(twin, owner="w1", token_hash="h2", request={})
    bind = {"provider": "krea", "provider_job_id": "p-9", "owner": "w1", "data": {}}
    assert await store.bind_listed_submission(twin, next_action_at=later, **bind)
    assert await store.bound_provider_job_ids("krea", ["p-9", "p-0"]) == {"p-9"}
    job = await store.get_job(twin)
    assert job is not None and job.status is S.SUBMITTED and job.provider_job_id == "p-9"


async def test_a_provider_job_is_bound_to_one_job_only(store: JobStore) -> None:
    first, second = await claimed(store), await claimed(store)
    later = datetime.now(UTC) + timedelta(hours=1)
    for job_id in (first, second):
        await store.begin_submission(job_id, owner="w1", token_hash="h", request={})
    bind = {"provider": "krea", "provider_job_id": "p-1", "owner": "w1", "data": {}}
    results = await asyncio.gather(
        store.bind_listed_submission(first, next_action_at=later, **bind),
        store.bind_listed_submission(second, next_action_at=later, **bind),
    )
    assert sorted(results) == [False, True]


async def test_a_resent_submission_is_due_and_can_begin_again(store: JobStore) -> None:
    job_id = await claimed(store)
    await store.begin_submission(job_id, owner="w1", token_hash="h", request={})
    assert await store.resend_unsent_submission(job_id, owner="w1", data={"verdict": "send"})
    [again] = await store.claim_due(owner="w1", limit=10, lease_seconds=60)
    assert again.submit_started_at is None and again.submit_unknown_at is None
    assert await store.begin_submission(job_id, owner="w1", token_hash="h", request={}) == "go"
    assert (await store.lookup(job_id)).submit_attempts == 2  # type: ignore[union-attr]


async def test_a_workers_change_releases_its_lease_and_sets_the_next_action(
    store: JobStore,
) -> None:
    job_id = await claimed(store)
    at = datetime.now(UTC) + timedelta(minutes=5)
    failed = Observation(S.FAILED, error=JobError(code="x", message="y"))
    queued = Observation(S.QUEUED, provider_job_id="p")
    await store.apply_observation(job_id, queued, source="system", schedule=Schedule("w1", at))
    assert await store.next_due_at() == at
    await store.apply_observation(job_id, failed, source="system", schedule=Schedule("w1"))
    assert await store.next_due_at() is None  # terminal: nothing is due
    job = await store.get_job(job_id)
    assert job is not None and job.error is not None and job.error.code == "x"


async def test_the_log_is_read_in_order_after_a_point(store: JobStore) -> None:
    a = (await store.create_job(create("a"), idempotency_key=None)).job.id
    b = (await store.create_job(create("b"), idempotency_key=None)).job.id
    await store.apply_observation(a, Observation(S.RUNNING), source="poll")
    everything = await store.events_after(0, job_id=None, limit=100)
    assert [e.job_id for e in everything][-3:] == [a, b, a]
    start = everything[-3].id - 1
    assert [e.job_id for e in await store.events_after(start, job_id=a, limit=100)] == [a, a]
    assert len(await store.events_after(start, job_id=None, limit=2)) == 2
    assert await store.last_event_id() == everything[-1].id


async def test_jobs_are_listed_newest_first_with_a_cursor(store: JobStore) -> None:
    # ids sort by creation time to the millisecond (ULIDs): one millisecond apart here
    ids = [new_job_id(1_700_000_000_000 + n) for n in range(3)]
    for n, job_id in enumerate(ids):
        await store.create_job(create(str(n)), idempotency_key=None, job_id=job_id)
    page, cursor = await store.list_jobs(provider="krea", status=None, limit=2, before_id=None)
    assert [j.id for j in page] == ids[::-1][:2] and cursor == ids[1]
    rest, end = await store.list_jobs(provider=None, status="accepted", limit=2, before_id=cursor)
    assert [j.id for j in rest] == [ids[0]] and end is None


async def test_jobs_are_found_by_id_or_by_text_in_their_metadata(store: JobStore) -> None:
    def with_metadata(metadata: dict[str, Any]) -> JobCreate:
        return create().model_copy(update={"metadata": metadata})

    a = await store.create_job(with_metadata({"order": "A-17"}), idempotency_key=None)
    b = await store.create_job(
        with_metadata({"customer": {"name": "Ada", "tags": ["vip", 100_5]}, "rush": True}),
        idempotency_key=None,
    )
    c = await store.create_job(with_metadata({"note": "50%_off \\ x"}), idempotency_key=None)
    await store.create_job(create(), idempotency_key=None)  # no metadata: found by id only

    async def found(search: str, **filters: Any) -> set[str]:
        query = {"provider": None, "status": None, **filters}
        jobs, _ = await store.list_jobs(limit=10, before_id=None, search=search, **query)
        return {job.id for job in jobs}

    assert await found(a.job.id) == {a.job.id}
    assert await found("a-1") == {a.job.id}  # part of a value, any case
    assert await found("ORDER") == {a.job.id}  # a key
    assert await found("ada") == await found("VIP") == await found("1005") == {b.job.id}
    assert await found("true") == {b.job.id}  # a boolean as JSON writes it
    assert await found("customer") == {b.job.id}  # a key holding an object
    # LIKE's wildcards and escape are plain text; JSON punctuation and quotes are not content
    assert await found("%_off \\") == {c.job.id}
    assert await found("_") == {c.job.id} and await found("%") == {c.job.id}
    assert await found('"') == await found("A-17}") == await found(": ") == set()
    assert await found("a-17", provider="fal") == set()  # filters still apply
    assert await found("a-17", status="accepted") == {a.job.id}


async def test_completion_times_of_recent_successes(store: JobStore) -> None:
    assert await store.completion_times("krea", "bfl/flux-1-dev") == CompletionTimes(0, None, None)
    job_id = (await store.create_job(create(), idempotency_key=None)).job.id
    await store.apply_observation(
        job_id, Observation(S.SUBMITTED, provider_job_id="p"), source="system"
    )
    await store.apply_observation(job_id, Observation(S.SUCCEEDED), source="webhook")
    times = await store.completion_times("krea", "bfl/flux-1-dev")
    assert times.samples == 1 and times.p95_s is not None and 0 <= times.p95_s < 60
    assert times.p10_s is not None and 0 <= times.p10_s <= times.p95_s


# --- routed jobs (CONTRACT.md, Routing across providers) -----------------------------------


def routed(prompt: str = "a lighthouse") -> JobCreate:
    return JobCreate(provider="auto", model="flux-1-krea-dev", input={"prompt": prompt})


def attempt(provider: str, model: str, timeout_s: float = 60.0) -> NextAttempt:
    return NextAttempt(
        provider=provider, model=model, input={"prompt": "a lighthouse"}, adjustments={},
        timeout_s=timeout_s,
    )  # fmt: skip


FAL = attempt("fal", "fal-ai/flux/krea")
SCENARIO = attempt("scenario", "model_flux-krea-dev")
PROVIDER_DOWN = JobError(code="provider_unavailable", message="503 three times")


async def routed_claimed(store: JobStore) -> str:
    created = await store.create_routed_job(
        routed(), idempotency_key=None, first=FAL, event_data={"route": ["fal", "scenario"]}
    )
    [record] = await store.claim_due(owner="w1", limit=10, lease_seconds=60)
    assert record.id == created.job.id
    return created.job.id


async def test_a_routed_job_shows_its_common_model_and_its_attempt(store: JobStore) -> None:
    created = await store.create_routed_job(
        routed(), idempotency_key="rk", first=FAL, event_data={"route": ["fal", "scenario"]}
    )
    job = created.job
    assert (job.provider, job.model, job.input) == (
        "fal",
        "flux-1-krea-dev",
        {"prompt": "a lighthouse"},
    )
    assert job.attempts is not None and [(a.provider, a.model, a.status) for a in job.attempts] == [
        ("fal", "fal-ai/flux/krea", "pending")
    ]
    again = await store.create_routed_job(routed(), idempotency_key="rk", first=FAL, event_data={})
    assert not again.created and again.job.id == job.id
    record = await store.lookup(job.id)
    assert record is not None
    assert (record.provider, record.model, record.route, record.attempt) == (
        "fal", "fal-ai/flux/krea", "flux-1-krea-dev", 1
    )  # fmt: skip
    [accepted] = await store.list_events(job.id)
    assert accepted.data == {"route": ["fal", "scenario"]}


async def test_an_attempt_fails_over_to_the_next_provider_and_starts_again(
    store: JobStore,
) -> None:
    job_id = await routed_claimed(store)
    assert (
        await store.begin_submission(job_id, owner="w1", token_hash="h1", request={"p": 1}) == "go"
    )
    outcome = await store.fail_over_attempt(
        job_id, attempt=1, source="system", error=PROVIDER_DOWN, data={}, next_attempt=SCENARIO
    )
    assert outcome == "next"
    record = await store.lookup(job_id)
    assert record is not None
    assert (record.provider, record.attempt, record.submit_started_at, record.status) == (
        "scenario", 2, None, S.ACCEPTED
    )  # fmt: skip
    # A news of attempt 1 arriving now changes nothing.
    stale = await store.fail_over_attempt(
        job_id, attempt=1, source="webhook", error=PROVIDER_DOWN, data={}, next_attempt=None
    )
    assert stale == "stale"
    [again] = await store.claim_due(owner="w2", limit=10, lease_seconds=60)
    assert again.id == job_id and again.awaits_submission
    assert (
        await store.begin_submission(job_id, owner="w2", token_hash="h2", request={"p": 2}) == "go"
    )
    assert await store.superseded_attempt(job_id, provider="fal", token_hash="h1") == 1
    assert await store.superseded_attempt(job_id, provider="scenario", token_hash="h2") is None
    events = await store.list_events(job_id)
    assert [e.type for e in events] == [
        "status_changed", "attempt_started", "submission_started", "attempt_failed",
        "attempt_started", "submission_started",
    ]  # fmt: skip
    failed, started = events[3], events[4]
    assert failed.data["error"]["code"] == "provider_unavailable" and failed.data["attempt"] == 1
    assert started.data["provider"] == "scenario" and started.data["request"] == {"p": 2}
    job = await store.get_job(job_id)
    assert job is not None and job.attempts is not None
    assert [(a.provider, a.status) for a in job.attempts] == [
        ("fal", "failed"), ("scenario", "started")
    ]  # fmt: skip


async def test_a_routed_job_fails_when_its_route_is_exhausted(store: JobStore) -> None:
    job_id = await routed_claimed(store)
    outcome = await store.fail_over_attempt(
        job_id, attempt=1, source="system", error=PROVIDER_DOWN, data={}, next_attempt=None
    )
    assert outcome == "failed"
    job = await store.get_job(job_id)
    assert job is not None and job.status is S.FAILED
    assert job.error is not None and job.error.code == "provider_unavailable"


async def test_the_status_never_moves_back_across_attempts(store: JobStore) -> None:
    job_id = await routed_claimed(store)
    await store.begin_submission(job_id, owner="w1", token_hash="h1", request={})
    running = Observation(S.RUNNING, provider_job_id="fal-1")
    assert (await store.apply_observation(job_id, running, source="webhook")).applied
    await store.fail_over_attempt(
        job_id, attempt=1, source="webhook", error=PROVIDER_DOWN, data={}, next_attempt=SCENARIO
    )
    record = await store.lookup(job_id)
    assert record is not None and record.status is S.RUNNING and record.awaits_submission
    submitted = Observation(S.SUBMITTED, provider_job_id="sc-1")
    assert not (await store.apply_observation(job_id, submitted, source="system")).applied
    record = await store.lookup(job_id)
    assert record is not None and record.provider_job_id == "sc-1"
    assert not record.awaits_submission
    done = Observation(S.SUCCEEDED, outputs=[JobOutput(url="https://x/1.png")])
    assert (await store.apply_observation(job_id, done, source="poll")).applied
    job = await store.get_job(job_id)
    assert job is not None and job.attempts is not None
    assert [(a.provider, a.status, a.provider_job_id) for a in job.attempts] == [
        ("fal", "failed", "fal-1"), ("scenario", "succeeded", "sc-1")
    ]  # fmt: skip


async def test_a_cancel_between_attempts_ends_the_job_at_once(store: JobStore) -> None:
    job_id = await routed_claimed(store)
    await store.begin_submission(job_id, owner="w1", token_hash="h1", request={})
    await store.apply_observation(job_id, Observation(S.QUEUED, provider_job_id="f"), source="poll")
    await store.fail_over_attempt(
        job_id, attempt=1, source="system", error=PROVIDER_DOWN, data={}, next_attempt=SCENARIO
    )
    result = await store.request_cancel(job_id)
    assert result.outcome == "canceled"
    assert result.job is not None and result.job.status is S.CANCELED


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_job_keeps_the_trace_it_was_created_in(store: JobStore) -> None:
    """The trace context given at creation comes back with the job's record, claimed or looked
    up (the later work joins that trace); none given, none kept. An idempotent replay keeps the
    first request's."""
    traced = await store.create_job(create("traced"), idempotency_key="t", traceparent=TRACEPARENT)
    replay = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await store.create_job(create("traced"), idempotency_key="t", traceparent=replay)
    untraced = await store.create_job(create("untraced"), idempotency_key=None)
    routed_job = await store.create_routed_job(
        routed(), idempotency_key=None, first=FAL, event_data={}, traceparent=TRACEPARENT
    )
    records = await store.claim_due(owner="w", limit=10, lease_seconds=60)
    claimed = {record.id: record.traceparent for record in records}
    assert claimed == {
        traced.job.id: TRACEPARENT, untraced.job.id: None, routed_job.job.id: TRACEPARENT
    }  # fmt: skip
    record = await store.lookup(routed_job.job.id)
    assert record is not None and record.traceparent == TRACEPARENT
