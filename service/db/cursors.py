"""Reading a large result in batches: a SQL cursor (DECLARE ... FETCH) of the caller's
transaction.

asyncpg's own `Connection.cursor` prepares a named statement that outlives the transaction and
is only closed at the connection's next statement. Through a pooler in transaction mode that
next statement may run on another server connection: the name stays behind on the first one,
where another client's statement of the same name (asyncpg numbers them per process) then fails
with "prepared statement already exists". A SQL cursor needs unnamed statements only, and the
server closes it with the transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from service.db.queries import query


async def stream(
    conn: asyncpg.Connection, name: str, *args: Any, batch: int = 1000
) -> AsyncIterator[asyncpg.Record]:
    """The rows of the named query `name`, fetched `batch` at a time. Runs inside a transaction
    (PostgreSQL refuses a cursor outside one), at most once at a time in it."""
    sql = query(name).rstrip().removesuffix(";")
    # The cursor is named after the query: one FETCH text per result type, so that a direct
    # connection's statement cache never answers a FETCH with another query's columns.
    await conn.execute(f'DECLARE "{name}" NO SCROLL CURSOR FOR {sql}', *args)
    fetch = f'FETCH FORWARD {batch} FROM "{name}"'
    while rows := await conn.fetch(fetch):
        for row in rows:
            yield row
