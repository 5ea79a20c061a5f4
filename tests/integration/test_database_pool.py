"""The pool hands connections back without a reset round trip, and still never leaks a
transaction from one use to the next."""

from __future__ import annotations

from typing import Any

from service.db.database import Database


async def test_a_released_connection_sends_no_reset_query(database: Database) -> None:
    sent: list[str] = []

    def log_query(record: Any) -> None:
        sent.append(record.query)

    async with database.pool.acquire() as conn:
        conn.add_query_logger(log_query)
        await conn.fetchval("SELECT 1")
    async with database.pool.acquire() as again:
        again.remove_query_logger(log_query)

    assert sent == ["SELECT 1"]  # asyncpg's default would add RESET ALL, UNLISTEN * ...


async def test_a_transaction_left_open_is_rolled_back_on_release(database_url: str) -> None:
    db = await Database.open(database_url, min_size=1, max_size=1)  # the same connection again
    try:
        async with db.pool.acquire() as conn:
            await conn.execute("CREATE TABLE pool_probe (n integer)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await db.close()
