"""The output archive queue on real PostgreSQL: rows written by the transition to succeeded and
only by it, claimed by one owner at a time and taken over when the lease runs out, each output
recorded once (a second record, or one by an owner that lost the lease, is refused), failures
retried without an event then recorded once, job.outputs_archived enqueued once per job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.jobs import JobCreate, JobOutput, JobStatus
from service.db.database import Database
from service.providers.base import Observation
from service.store.archive import ArchivedOutput, ArchiveQueue
from service.store.postgres import PostgresJobStore

S = JobStatus
OUTPUTS = [
    JobOutput(url="https://cdn.test/a.png?Expires=1&Signature=s", content_type="image/png"),
    JobOutput(url="https://cdn.test/b.png", content_type="image/png", width=8, height=8),
]


def stored(index: int, **overrides: object) -> ArchivedOutput:
    values: dict[str, object] = {
        "storage_key": f"k/{index}", "sha256": f"{index:064x}", "bytes": 10 + index,
        "content_type": "image/png", "width": 32, "height": 16,
    }  # fmt: skip
    values.update(overrides)
    return ArchivedOutput(**values)  # type: ignore[arg-type]


async def succeeded_job(
    store: PostgresJobStore, *, webhook_url: str | None = None, status: JobStatus = S.SUCCEEDED
) -> str:
    body = {"provider": "fal", "model": "fal-ai/flux/krea", "input": {"prompt": "x"},
            "webhook_url": webhook_url}  # fmt: skip
    created = await store.create_job(JobCreate.model_validate(body), idempotency_key=None)
    job_id = created.job.id
    await store.apply_observation(
        job_id, Observation(S.RUNNING, provider_job_id="p"), source="poll"
    )
    await store.apply_observation(job_id, Observation(status, outputs=OUTPUTS), source="poll")
    return job_id


async def event_types(database: Database, job_id: str) -> list[str]:
    async with database.connection() as conn:
        rows = await conn.fetch(
            "SELECT type FROM job_events WHERE job_id = $1 ORDER BY seq", job_id
        )
    return [row["type"] for row in rows]


async def test_only_the_transition_to_succeeded_enqueues_its_outputs(database: Database) -> None:
    store = PostgresJobStore(database)
    queue = ArchiveQueue(database)
    done = await succeeded_job(store)
    await succeeded_job(store, status=S.FAILED)
    # A repeated success changes nothing, and enqueues nothing more.
    await store.apply_observation(done, Observation(S.SUCCEEDED, outputs=OUTPUTS), source="webhook")
    claimed = await queue.claim(owner="a", limit=10, lease_seconds=60)
    assert sorted((i.job_id, i.index, i.url) for i in claimed) == [
        (done, 0, OUTPUTS[0].url),
        (done, 1, OUTPUTS[1].url),
    ]
    assert await queue.backlog() == 2
    await store.close()


async def test_each_output_is_recorded_once_by_its_lease_holder(database: Database) -> None:
    store = PostgresJobStore(database)
    queue = ArchiveQueue(database)
    job_id = await succeeded_job(store, webhook_url="https://client.test/hook")
    first, second = sorted(
        await queue.claim(owner="a", limit=10, lease_seconds=60), key=lambda i: i.index
    )
    assert await queue.claim(owner="b", limit=10, lease_seconds=60) == []  # leased to a
    assert await queue.record_archived(first, owner="b", output=stored(0)) == (False, False)
    assert await queue.record_archived(first, owner="a", output=stored(0)) == (True, False)
    assert await queue.record_archived(first, owner="a", output=stored(0)) == (False, False)
    assert await queue.record_archived(second, owner="a", output=stored(1)) == (True, True)

    job = await store.get_job(job_id)
    assert job is not None and job.status is S.SUCCEEDED
    a, b = job.outputs
    assert (a.sha256, a.bytes, a.archived_url) == ("0" * 64, 10, f"/v1/jobs/{job_id}/outputs/0")
    assert (a.width, a.height) == (32, 16)  # the provider gave none: the header's
    assert (b.width, b.height) == (8, 8)  # the provider's own are kept
    assert a.url == OUTPUTS[0].url
    types = await event_types(database, job_id)
    assert types.count("output_archived") == 2
    events = await store.list_events(job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    archived = [e for e in events if e.type == "output_archived"]
    assert archived[0].data == {"index": 0, "sha256": "0" * 64, "bytes": 10,
                                "content_type": "image/png", "width": 32, "height": 16}  # fmt: skip
    assert "width" not in archived[1].data
    async with database.connection() as conn:
        webhooks = await conn.fetch(
            "SELECT event_id, event_type, job_snapshot FROM webhook_deliveries "
            "WHERE job_id = $1 AND event_type = 'job.outputs_archived'",
            job_id,
        )
    assert [w["event_id"] for w in webhooks] == [archived[-1].id]
    assert [o["sha256"] for o in webhooks[0]["job_snapshot"]["outputs"]] == ["0" * 64, f"{1:064x}"]
    lookup = await queue.lookup(job_id, 1)
    assert lookup is not None and lookup.archived is not None
    assert (lookup.archived.storage_key, lookup.archived.bytes) == ("k/1", 11)
    assert await queue.backlog() == 0
    await store.close()


async def test_a_crashed_owners_outputs_are_taken_over_when_the_lease_runs_out(
    database: Database,
) -> None:
    store = PostgresJobStore(database)
    queue = ArchiveQueue(database)
    await succeeded_job(store)
    lost = await queue.claim(owner="crashed", limit=10, lease_seconds=0.001)
    async with database.connection() as conn:  # the lease has run out once the clock moved on
        await conn.execute("SELECT pg_sleep(0.01)")
    taken = await queue.claim(owner="b", limit=10, lease_seconds=60)
    assert sorted(i.index for i in taken) == [0, 1]
    assert {i.attempts for i in taken} == {2}  # the lost attempt counts
    # The first owner comes back too late: its record is refused, the new owner's is kept.
    assert await queue.record_archived(lost[0], owner="crashed", output=stored(0)) == (False, False)
    assert (await queue.record_archived(taken[0], owner="b", output=stored(0)))[0]
    await store.close()


async def test_failures_are_retried_silently_then_recorded_once(database: Database) -> None:
    store = PostgresJobStore(database)
    queue = ArchiveQueue(database)
    job_id = await succeeded_job(store)
    item = next(i for i in await queue.claim(owner="a", limit=10, lease_seconds=60) if i.index == 0)
    soon = datetime.now(UTC) + timedelta(milliseconds=1)
    assert await queue.record_failure(item, owner="a", code="download_failed", reason="http 500",
                                      retry_at=soon)  # fmt: skip
    assert "output_archive_failed" not in await event_types(database, job_id)
    async with database.connection() as conn:
        await conn.execute("SELECT pg_sleep(0.01)")
    again = next(
        i for i in await queue.claim(owner="a", limit=10, lease_seconds=60) if i.index == 0
    )
    assert again.attempts == 2
    assert await queue.record_failure(again, owner="a", code="download_failed",
                                      reason="http 500", retry_at=None)  # fmt: skip
    assert not await queue.record_failure(again, owner="a", code="download_failed",
                                          reason="http 500", retry_at=None)  # fmt: skip
    events = [e for e in await store.list_events(job_id) if e.type == "output_archive_failed"]
    assert [e.data for e in events] == [
        {"index": 0, "code": "download_failed", "reason": "http 500", "attempts": 2}
    ]
    job = await store.get_job(job_id)
    assert job is not None and job.status is S.SUCCEEDED
    assert await queue.backlog() == 1  # output 1 is still to archive
    await store.close()
