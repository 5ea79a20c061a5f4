"""The event store on real PostgreSQL: transitions, dedupe, append-only history, ordering."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest

from schemas.jobs import JobCreate, JobError, JobOutput, JobStatus
from service.db.database import Database
from service.providers.base import Observation
from service.store import JobStore
from service.store.postgres import PostgresJobStore

S = JobStatus
TERMINAL = {S.SUCCEEDED, S.FAILED, S.CANCELED}
ORDER = [S.ACCEPTED, S.SUBMITTED, S.QUEUED, S.RUNNING]

# The contract's rule, written out pair by pair: forward only, steps may be skipped,
# the three terminal statuses are final.
EXPECTED_ALLOWED = {
    (S.ACCEPTED, S.SUBMITTED), (S.ACCEPTED, S.QUEUED), (S.ACCEPTED, S.RUNNING),
    (S.ACCEPTED, S.SUCCEEDED), (S.ACCEPTED, S.FAILED), (S.ACCEPTED, S.CANCELED),
    (S.SUBMITTED, S.QUEUED), (S.SUBMITTED, S.RUNNING),
    (S.SUBMITTED, S.SUCCEEDED), (S.SUBMITTED, S.FAILED), (S.SUBMITTED, S.CANCELED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.SUCCEEDED), (S.QUEUED, S.FAILED), (S.QUEUED, S.CANCELED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELED),
}  # fmt: skip

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


def request(**overrides: object) -> JobCreate:
    body = {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "a lighthouse"}}
    body.update(overrides)
    return JobCreate.model_validate(body)


async def job_in(store: JobStore, status: JobStatus) -> str:
    """A job driven to `status` through the allowed path."""
    created = await store.create_job(request(), idempotency_key=None)
    path = {S.ACCEPTED: [], S.SUBMITTED: [S.SUBMITTED], S.QUEUED: [S.SUBMITTED, S.QUEUED],
            S.RUNNING: [S.SUBMITTED, S.RUNNING]}.get(status, [S.SUBMITTED, status])  # fmt: skip
    for step in path:
        result = await store.apply_observation(created.job.id, Observation(step), source="system")
        assert result.applied
    return created.job.id


async def test_the_database_rule_matches_the_contract_for_every_pair(database: Database) -> None:
    async with database.connection() as conn:
        for from_status, to_status in ALL_PAIRS:
            allowed = await conn.fetchval(
                "SELECT job_transition_allowed($1, $2)", from_status.value, to_status.value
            )
            assert allowed == ((from_status, to_status) in EXPECTED_ALLOWED), (
                from_status,
                to_status,
            )


@pytest.mark.parametrize(("from_status", "to_status"), ALL_PAIRS)
async def test_apply_observation_for_every_pair(
    store: JobStore, from_status: JobStatus, to_status: JobStatus
) -> None:
    job_id = await job_in(store, from_status)
    before = await store.list_events(job_id)
    result = await store.apply_observation(
        job_id, Observation(to_status), source="webhook", record_ignored=True
    )
    after = await store.list_events(job_id)
    job = await store.get_job(job_id)
    assert job is not None
    assert len(after) == len(before) + 1
    new = after[-1]
    if (from_status, to_status) in EXPECTED_ALLOWED:
        assert result.applied
        assert job.status == to_status
        assert (new.type, new.from_status, new.to_status) == (
            "status_changed",
            from_status,
            to_status,
        )
        assert (job.completed_at is not None) == (to_status in TERMINAL)
    else:
        assert not result.applied
        assert job.status == from_status
        assert new.type == "observation_ignored"
        assert new.to_status is None and new.from_status is None
        assert new.data["observed_status"] == to_status.value
        assert new.data["reason"] == ("duplicate" if from_status == to_status else "stale")


async def test_the_trigger_refuses_a_backward_update_made_by_hand(
    store: JobStore, database: Database
) -> None:
    job_id = await job_in(store, S.RUNNING)
    async with database.connection() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="refused"):
            await conn.execute("UPDATE jobs SET status = 'queued' WHERE id = $1", job_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM jobs WHERE id = $1", job_id)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE job_events SET type = 'x'", "DELETE FROM job_events", "TRUNCATE job_events CASCADE"],
)
async def test_the_history_is_append_only(
    store: JobStore, database: Database, statement: str
) -> None:
    await job_in(store, S.QUEUED)
    async with database.connection() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM job_events") == 3


async def test_a_duplicate_without_record_adds_nothing(store: JobStore) -> None:
    job_id = await job_in(store, S.RUNNING)
    result = await store.apply_observation(job_id, Observation(S.RUNNING), source="poll")
    assert not result.applied and result.event_id is None
    assert [e.seq for e in await store.list_events(job_id)] == [1, 2, 3]


async def test_concurrent_identical_observations_change_the_status_once(store: JobStore) -> None:
    job_id = await job_in(store, S.SUBMITTED)
    outputs = [JobOutput(url="https://cdn.example/a.jpg", content_type="image/jpeg")]
    results = await asyncio.gather(*(
        store.apply_observation(job_id, Observation(S.SUCCEEDED, outputs=outputs), source="webhook", record_ignored=True)
        for _ in range(10)
    ))  # fmt: skip
    assert sum(r.applied for r in results) == 1
    events = await store.list_events(job_id)
    changes = [e for e in events if e.type == "status_changed" and e.to_status == S.SUCCEEDED]
    assert len(changes) == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    job = await store.get_job(job_id)
    assert job is not None and job.outputs == outputs


async def test_terminal_observation_keeps_error_and_provider_job_id(store: JobStore) -> None:
    created = await store.create_job(request(), idempotency_key=None)
    error = JobError(code="provider_failed", message="boom", provider_detail={"detail": "x"})
    await store.apply_observation(
        created.job.id, Observation(S.SUBMITTED, provider_job_id="req-1"), source="system"
    )
    await store.apply_observation(
        created.job.id,
        Observation(S.FAILED, provider_job_id="req-2", error=error),
        source="webhook",
    )
    job = await store.get_job(created.job.id)
    assert job is not None
    assert job.error == error
    assert job.provider_job_id == "req-1"  # the first binding stays


async def test_event_ids_are_drawn_in_commit_order(store: JobStore, database: Database) -> None:
    """While one transaction that appended an event is open, another appender waits: so no reader
    can ever see a larger id committed before a smaller one (the stream's resume point)."""
    first_job, second_job = await job_in(store, S.SUBMITTED), await job_in(store, S.SUBMITTED)
    async with (
        database.connection() as holder,
        database.connection() as other,
        database.connection() as reader,
    ):
        other_pid = await other.fetchval("SELECT pg_backend_pid()")
        tx = holder.transaction()
        await tx.start()
        first_id = await holder.fetchval(
            "SELECT event_id FROM apply_observation($1, 'queued', 'webhook', '{}', NULL, NULL, NULL, false, NULL, NULL, NULL)",
            first_job,
        )
        second = asyncio.create_task(other.fetchval(
            "SELECT event_id FROM apply_observation($1, 'queued', 'webhook', '{}', NULL, NULL, NULL, false, NULL, NULL, NULL)",
            second_job,
        ))  # fmt: skip

        async def second_waits_for_the_lock() -> None:
            # The condition lives in PostgreSQL: there is no event to await, so it is polled.
            while not await reader.fetchval(  # noqa: ASYNC110
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", other_pid
            ):
                await asyncio.sleep(0.005)

        waiting = asyncio.create_task(second_waits_for_the_lock())
        done, _ = await asyncio.wait({second, waiting}, return_when=asyncio.FIRST_COMPLETED)
        assert waiting in done and second not in done, "the second appender did not wait"
        assert await reader.fetchval("SELECT max(id) FROM job_events") < first_id
        await tx.commit()
        second_id = await second
    assert second_id > first_id


async def test_idempotency_key_is_decided_by_the_unique_index_under_concurrency(
    store: JobStore,
) -> None:
    results = await asyncio.gather(
        *(store.create_job(request(), idempotency_key="k-1") for _ in range(8))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.job.id for r in results}) == 1


async def test_cancel_before_submission_cancels_at_once(store: JobStore) -> None:
    created = await store.create_job(request(), idempotency_key=None)
    first = await store.request_cancel(created.job.id)
    assert first.outcome == "canceled"
    assert first.job is not None and first.job.status == S.CANCELED
    second = await store.request_cancel(created.job.id)
    assert second.outcome == "finished"
    types = [e.type for e in await store.list_events(created.job.id)]
    assert types == ["status_changed", "cancel_requested", "status_changed"]


async def test_cancel_at_the_provider_is_recorded_once(store: JobStore) -> None:
    job_id = await job_in(store, S.RUNNING)
    assert (await store.request_cancel(job_id)).outcome == "requested"
    assert (await store.request_cancel(job_id)).outcome == "already_requested"
    job = await store.get_job(job_id)
    assert job is not None and job.status == S.RUNNING and job.cancel_requested
    types = [e.type for e in await store.list_events(job_id)]
    assert types.count("cancel_requested") == 1


async def test_batched_observations_apply_in_order_and_never_twice(database: Database) -> None:
    store = PostgresJobStore(database, max_batch=64)
    try:
        job_ids = [await job_in(store, S.SUBMITTED) for _ in range(12)]
        # Every job observed running then succeeded, three times over, from many concurrent
        # callers: batches overlap on the same rows, and one batch holds duplicates.
        calls = [
            store.apply_observation(j, Observation(status), source="webhook", record_ignored=True)
            for _ in range(3)
            for j in reversed(job_ids)
            for status in (S.RUNNING, S.SUCCEEDED)
        ]
        results = await asyncio.gather(*calls)
        assert sum(r.applied for r in results) == 2 * len(job_ids)
        for job_id in job_ids:
            events = await store.list_events(job_id)
            steps = [(e.from_status, e.to_status) for e in events if e.type == "status_changed"]
            assert steps == [
                (None, S.ACCEPTED),
                (S.ACCEPTED, S.SUBMITTED),
                (S.SUBMITTED, S.RUNNING),
                (S.RUNNING, S.SUCCEEDED),
            ]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert sum(e.type == "observation_ignored" for e in events) == 4
        assert store._applications.batches < len(calls)  # they really were combined
    finally:
        await store.close()
