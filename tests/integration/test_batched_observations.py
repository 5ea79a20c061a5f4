"""A batch of observations (`apply_observations`, set-based) ends exactly where the same
observations applied one at a time (`apply_observation`) end: the same outcome per item, the
same job rows, the same events in the same order. Batches are drawn at random (fixed seeds), with
several observations of one job, unknown jobs, stale and duplicate news, leases and outputs."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.jobs import JobCreate
from service.db.database import Database
from service.db.queries import query
from service.store.postgres import PostgresJobStore

STATUSES = ["submitted", "queued", "running", "succeeded", "failed", "canceled"]
JOBS = 4
JOB_COLUMNS = (
    "status", "last_seq", "provider_job_id", "provider_state", "outputs", "error",
    "next_action_at", "lease_owner", "completed_at IS NULL AS open", "submitted_at IS NULL AS unsent",
)  # fmt: skip
EVENT_COLUMNS = "seq, type, from_status, to_status, source, data"


def draw_batch(rng: random.Random, size: int) -> list[dict[str, Any]]:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    return [
        {
            "job": rng.randrange(JOBS + 1),  # JOBS: a job that does not exist
            "status": rng.choice(STATUSES),
            "source": rng.choice(["webhook", "poll", "system"]),
            "data": rng.choice([None, {"n": n}]),
            "provider_job_id": rng.choice([None, f"p-{rng.randrange(3)}"]),
            "outputs": rng.choice([None, [{"url": f"https://cdn.example/{n}.png"}]]),
            "error": rng.choice([None, {"code": "provider_failed", "message": "no"}]),
            "record_ignored": rng.random() < 0.5,
            "provider_state": rng.choice([None, {"k": n}]),
            "next_action_at": rng.choice([None, at + timedelta(seconds=n)]),
            "lease_owner": rng.choice([None, "w1", "w2"]),
        }
        for n in range(size)
    ]


async def new_jobs(store: PostgresJobStore) -> list[str]:
    ids = []
    for _ in range(JOBS):
        job = JobCreate(provider="krea", model="bfl/flux-1-dev", input={"prompt": "x"})
        ids.append((await store.create_job(job, idempotency_key=None)).job.id)
    claimed = await store.claim_due(owner="w1", limit=JOBS, lease_seconds=60)
    assert len(claimed) == JOBS
    # The claims' lease ends differ by microseconds: one fixed next action for both sets.
    await store.db.pool.execute(
        "UPDATE jobs SET next_action_at = '2029-01-01Z' WHERE id = ANY($1::text[])", ids
    )
    return ids


def text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def state(db: Database, ids: list[str]) -> tuple[list[Any], list[Any]]:
    jobs = [
        dict(await db.pool.fetchrow(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id = $1", i))
        for i in ids
    ]
    events = [
        [
            dict(row)
            for row in await db.pool.fetch(
                f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 ORDER BY id", i
            )
        ]
        for i in ids
    ]
    return jobs, events


@pytest.mark.parametrize("seed", range(12))
async def test_a_batch_ends_where_one_at_a_time_ends(database: Database, seed: int) -> None:
    rng = random.Random(seed)
    batch = draw_batch(rng, rng.randrange(1, 40))
    store = PostgresJobStore(database)
    try:
        batched_ids, single_ids = await new_jobs(store), await new_jobs(store)
    finally:
        await store.close()
    unknown = "job_does_not_exist"

    def job_of(item: dict[str, Any], ids: list[str]) -> str:
        return ids[item["job"]] if item["job"] < JOBS else unknown

    async def apply(items: list[dict[str, Any]], ids: list[str]) -> list[Any]:
        return list(
            await database.pool.fetch(
                query("apply_observations"),
                [job_of(i, ids) for i in items],
                [i["status"] for i in items],
                [i["source"] for i in items],
                [text(i["data"]) for i in items],
                [i["provider_job_id"] for i in items],
                [text(i["outputs"]) for i in items],
                [text(i["error"]) for i in items],
                [i["record_ignored"] for i in items],
                [text(i["provider_state"]) for i in items],
                [i["next_action_at"] for i in items],
                [i["lease_owner"] for i in items],
            )
        )

    batched = [(r["applied"], r["event_id"] is not None) for r in await apply(batch, batched_ids)]
    single = []
    for item in batch:
        row = await database.pool.fetchrow(
            "SELECT applied, event_id FROM apply_observation($1, $2, $3, $4::text::jsonb, $5,"
            " $6::text::jsonb, $7::text::jsonb, $8, $9::text::jsonb, $10, $11)",
            job_of(item, single_ids), item["status"], item["source"], text(item["data"]),
            item["provider_job_id"], text(item["outputs"]), text(item["error"]),
            item["record_ignored"], text(item["provider_state"]), item["next_action_at"],
            item["lease_owner"],
        )  # fmt: skip
        assert row is not None
        single.append((bool(row["applied"]), row["event_id"] is not None))

    assert batched == single
    # Events compared in id order: each job's events got ids in the order of their seq.
    assert await state(database, batched_ids) == await state(database, single_ids)
