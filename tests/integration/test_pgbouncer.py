"""Through PgBouncer in transaction mode (tests/pgbouncer.py: two server connections per
database, so that concurrent clients really share them): the pool in pooled mode, streamed
reads and migrations leave nothing on a server connection that another client could trip on.

The control test shows that the fixture does reproduce the hazard: the same clients without
pooled mode fail."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from schemas.jobs import JobCreate
from service.db.database import Database, connect
from service.store.audit import AuditLog
from service.store.postgres import PostgresJobStore
from tests.integration.test_audit_chain import Log
from tests.integration.test_audit_chain import log as log  # a fixture: three sealed jobs
from tests.integration.test_migrations import instances_apply_each_migration_once
from tests.integration.test_ops_cli import cli
from tests.pgbouncer import PgBouncer

CLIENTS = 20  # pool connections, each a client of PgBouncer
TASKS = 40
ROUNDS = 25


async def one_use(db: Database, task: int, round_: int) -> bool:
    """Statements of several shapes on one pooled connection (parameters, the JSON codec,
    several rows); True when every answer is right."""
    async with db.connection() as conn:
        total = await conn.fetchval("SELECT $1::int + $2::int", task, round_)
        text = await conn.fetchval("SELECT $1::text || '-' || $2::text", str(task), str(round_))
        data = await conn.fetchval("SELECT jsonb_build_object('t', $1::int, 'r', $2::int)", task, round_)  # fmt: skip
        rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", round_ % 5 + 1)
    return (
        total == task + round_
        and text == f"{task}-{round_}"
        and data == {"t": task, "r": round_}
        and [r["g"] for r in rows] == list(range(1, round_ % 5 + 2))
    )


async def concurrent_uses(db: Database) -> tuple[int, Counter[str]]:
    """TASKS tasks x ROUNDS uses at once: how many answers were right, and the errors by type."""
    right = 0
    errors: Counter[str] = Counter()

    async def task(n: int) -> None:
        nonlocal right
        for round_ in range(ROUNDS):
            try:
                ok = await one_use(db, n, round_)
            except asyncpg.PostgresError as exc:
                errors[type(exc).__name__] += 1
            else:
                right += ok

    await asyncio.gather(*(task(n) for n in range(TASKS)))
    return right, errors


async def server_backends(direct_dsn: str) -> int:
    """Server connections to this database, other than the one asking."""
    conn = await asyncpg.connect(direct_dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return count
    finally:
        await conn.close()


async def test_many_clients_share_two_server_connections_without_an_error(
    pooled_url: str, database_url: str
) -> None:
    db = await Database.open(pooled_url, pooled=True, min_size=CLIENTS, max_size=CLIENTS)
    try:
        right, errors = await concurrent_uses(db)
        assert errors == Counter()
        assert right == TASKS * ROUNDS
        assert db.pool.get_size() == CLIENTS
        assert await server_backends(database_url) <= 2  # the clients did share them
    finally:
        await db.close()


async def test_without_pooled_mode_the_same_clients_fail(pooled_url: str) -> None:
    """The control: asyncpg's cached (named) prepared statements are looked for on whichever
    server connection PgBouncer gives the next statement."""
    db = await Database.open(pooled_url, pooled=False, min_size=CLIENTS, max_size=CLIENTS)
    try:
        _, errors = await concurrent_uses(db)
        assert errors["InvalidSQLStatementNameError"] > 0  # "prepared statement ... does not exist"
    finally:
        await db.close()


async def prepared_statements_left(pgbouncer: PgBouncer, direct_dsn: str) -> list[str]:
    """The prepared statements on each of the database's two server connections: two
    transactions at once hold both."""
    clients = [
        await asyncpg.connect(pgbouncer.url(direct_dsn), statement_cache_size=0) for _ in range(2)
    ]
    transactions = [client.transaction() for client in clients]
    try:
        for transaction in transactions:
            await transaction.start()
        pids = {await client.fetchval("SELECT pg_backend_pid()") for client in clients}
        assert len(pids) == 2  # both server connections
        return [
            row["name"]
            for client in clients
            for row in await client.fetch("SELECT name FROM pg_prepared_statements")
        ]
    finally:
        for transaction in transactions:
            await transaction.rollback()
        for client in clients:
            await client.close()


async def test_streamed_reads_leave_no_statement_on_a_server_connection(
    pgbouncer: PgBouncer, pooled_url: str, database_url: str
) -> None:
    db = await Database.open(pooled_url, pooled=True, min_size=1, max_size=4)
    try:
        store = PostgresJobStore(db)
        request = JobCreate(provider="krea", model="bfl/flux-1-dev", input={"prompt": "x"})
        created = await store.create_job(request, idempotency_key=None)
        await store.close()
        log = AuditLog(db)
        rows = [row async for row in log.chain_rows(None)]  # a cursor, as verification reads
        assert [row.job_id for row in rows] == [created.job.id]
        exported = [event async for event in log.sealed_events(since=None, until=None, job_id=None)]
        assert exported == []  # nothing sealed in this test: no sealer runs
    finally:
        await db.close()
    assert await prepared_statements_left(pgbouncer, database_url) == []


async def test_instances_starting_together_through_pgbouncer_apply_each_migration_once(
    pgbouncer: PgBouncer, empty_database: str
) -> None:
    conns = [await connect(pgbouncer.url(empty_database)) for _ in range(4)]
    try:
        await instances_apply_each_migration_once(conns)
    finally:
        for conn in conns:
            await conn.close()
    assert await prepared_statements_left(pgbouncer, empty_database) == []


async def test_the_command_line_through_pgbouncer(pgbouncer: PgBouncer, log: Log) -> None:
    """`audit verify` (a streamed read) and `jobs list` with DATABASE_URL at PgBouncer and
    DATABASE_LISTEN_URL at the server, as an operator of a pooled deployment runs them."""
    await log.seal_and_checkpoint()
    pooled, direct = pgbouncer.url(log.database_url), log.database_url
    ran = await cli(pooled, "audit", "verify", listen_url=direct)
    assert (ran.code, ran.out.split(":")[0]) == (0, "audit ok (the whole log)"), ran.err
    ran = await cli(pooled, "jobs", "list", listen_url=direct)
    assert [line.split()[0] for line in ran.lines()] == list(reversed(log.jobs)), ran.err
    assert await prepared_statements_left(pgbouncer, log.database_url) == []
