"""Graceful shutdown's release (sql/queries: release_job_leases, release_webhook_leases,
release_output_archive_leases) on real PostgreSQL: what the owner holds becomes due now with
no lease, in one statement that wakes the other instances (NOTIFY on the kind's channel); a
started submission stays started; nobody else's lease and nothing scheduled beyond the lease
is touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from schemas.jobs import JobCreate
from service.db.database import Database
from service.store.archive import ArchiveQueue
from service.store.outbox import WebhookOutbox
from service.store.postgres import PostgresJobStore
from tests.integration.test_archive_queue import succeeded_job

LEASE_S = 300.0


class Listener:
    """Notifications on one channel, awaited one by one."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.received: asyncio.Queue[str] = asyncio.Queue()

    def _on(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.received.put_nowait(payload)

    async def __aenter__(self) -> Listener:
        await self.conn.add_listener(self.channel, self._on)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.conn.remove_listener(self.channel, self._on)

    async def next(self) -> str:
        async with asyncio.timeout(5):
            return await self.received.get()


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def new_job(store: PostgresJobStore, prompt: str) -> str:
    body = {"provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": prompt}}
    created = await store.create_job(JobCreate.model_validate(body), idempotency_key=None)
    return created.job.id


async def test_the_jobs_an_instance_holds_are_due_now_and_the_others_woken(
    database: Database, listening: asyncpg.Connection
) -> None:
    store = PostgresJobStore(database)
    mine, sent, theirs, later = [await new_job(store, f"p{i}") for i in range(4)]
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE jobs SET lease_owner = 'A', next_action_at = now() + interval '290 seconds' "
            "WHERE id = ANY($1::text[])", [mine, sent],
        )  # fmt: skip
        started = datetime.now(UTC) - timedelta(seconds=2)
        await conn.execute("UPDATE jobs SET submit_started_at = $2 WHERE id = $1", sent, started)
        await conn.execute(
            "UPDATE jobs SET lease_owner = 'B', next_action_at = now() + interval '290 seconds' "
            "WHERE id = $1", theirs,
        )  # fmt: skip
        # A's old id left on a job scheduled beyond any lease (a callback rescheduled it).
        await conn.execute(
            "UPDATE jobs SET lease_owner = 'A', next_action_at = now() + interval '1 hour' "
            "WHERE id = $1", later,
        )  # fmt: skip
    async with Listener(listening, "jobs_due") as woken:
        assert await store.release_leases(owner="A", lease_seconds=LEASE_S) == 2
        await woken.next()
    async with database.connection() as conn:
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, lease_owner, next_action_at <= now() AS due, submit_started_at, "
                "       status FROM jobs"
            )
        }
    assert rows[mine]["lease_owner"] is None and rows[mine]["due"]
    assert rows[sent]["lease_owner"] is None and rows[sent]["due"]
    assert rows[sent]["submit_started_at"] == started  # the unknown outcome stays to settle
    assert rows[sent]["status"] == "accepted"
    assert rows[theirs]["lease_owner"] == "B" and not rows[theirs]["due"]
    assert rows[later]["lease_owner"] == "A" and not rows[later]["due"]
    assert await store.release_leases(owner="A", lease_seconds=LEASE_S) == 0


async def test_webhook_deliveries_and_output_archives_held_are_due_now(
    database: Database, listening: asyncpg.Connection
) -> None:
    store = PostgresJobStore(database)
    outbox, queue = WebhookOutbox(database), ArchiveQueue(database)
    await succeeded_job(store, webhook_url="https://client.test/hook")
    deliveries = await outbox.claim(owner="A", limit=100, lease_seconds=LEASE_S)
    outputs = await queue.claim(owner="A", limit=100, lease_seconds=LEASE_S)
    assert deliveries and outputs
    assert await outbox.claim(owner="B", limit=100, lease_seconds=LEASE_S) == []
    async with Listener(listening, "webhook_deliveries") as woken:
        assert await outbox.release_leases(owner="A", lease_seconds=LEASE_S) == len(deliveries)
        await woken.next()
    async with Listener(listening, "output_archives") as woken:
        assert await queue.release_leases(owner="A", lease_seconds=LEASE_S) == len(outputs)
        await woken.next()
    # Due now: the other instance claims them at once.
    assert len(await outbox.claim(owner="B", limit=100, lease_seconds=LEASE_S)) == len(deliveries)
    taken = await queue.claim(owner="B", limit=100, lease_seconds=LEASE_S)
    assert len(taken) == len(outputs)
    assert await outbox.release_leases(owner="A", lease_seconds=LEASE_S) == 0
    assert await queue.release_leases(owner="A", lease_seconds=LEASE_S) == 0
