"""The connection pool and the boundary where asyncpg's errors become the service's.

Any failure to reach PostgreSQL (refused connection, server shutting down or starting,
connection lost mid-query, pool exhausted past its timeout, a pooler that cannot reach the
server) becomes `DatabaseUnavailable`, which the API answers with 503. When such a failure is
seen, every pooled connection is expired, so that after PostgreSQL returns the pool reconnects
by itself: no restart of the service.

Through a pooler in transaction mode (PgBouncer; `pooled`), each transaction, or each statement
outside one, may run on a different server connection, so nothing may outlive it there:
asyncpg's statement cache is off (its named prepared statements would be looked for on another
server connection). asyncpg then sends every statement unnamed and parses it again in the same
message batch as its Bind and Execute (asyncpg >= 0.29), so a statement outside a transaction
is complete on whichever server connection runs it. The rest of the service keeps no session
state on pooled connections (see _keep_session).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import orjson

from service.db.queries import query
from service.errors import DatabaseUnavailable
from service.logs import get_logger

T = TypeVar("T")

# SQLSTATE classes meaning "the server is not there for you now": 08 connection exception,
# 53 insufficient resources, 57 operator intervention (shutdown, starting up).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")

# Prepared statements each direct pooled connection keeps (asyncpg's default).
_STATEMENT_CACHE_SIZE = 100


def is_unavailable_error(exc: BaseException) -> bool:
    """True when the error means PostgreSQL could not be reached, as opposed to a bad query."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | asyncpg.exceptions.ConnectionDoesNotExistError,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a released connection needs before its next use: nothing beyond what asyncpg always
    does (roll back a transaction left open, drop listeners). The service keeps no session state
    on pooled connections: its advisory locks (the migrations' included) and settings are
    transaction-scoped, its cursors are SQL cursors of a transaction (service.db.cursors), and
    LISTEN has a connection of its own. asyncpg's default reset would send
    `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release: a round trip
    per use, 4 % of the service's CPU under saturated intake (py-spy)."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            format="text",
        )


async def connect(
    dsn: str, *, connect_timeout: float = 5.0, application_name: str = "imagejobs"
) -> asyncpg.Connection:
    """One connection outside the pool (migrations, LISTEN), with the project's codecs. It runs
    a handful of statements, so it caches none: the same connection then works through a pooler
    in transaction mode (the migrations go through DATABASE_URL)."""
    conn: asyncpg.Connection | None = None
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=connect_timeout,
            statement_cache_size=0,
            server_settings={"application_name": application_name},
        )
        # Through a pooler the login may succeed with the server away: the first statements
        # (the codecs') are where that shows.
        await _init_connection(conn)
    except Exception as exc:
        if conn is not None:
            conn.terminate()
        if is_unavailable_error(exc):
            raise DatabaseUnavailable() from exc
        raise
    return conn


class Database:
    """A pool of connections and the named queries run on it."""

    def __init__(self, pool: asyncpg.Pool, *, dsn: str = "", acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.dsn = dsn  # for connections outside the pool (LISTEN)
        self.acquire_timeout = acquire_timeout
        self._log = get_logger("service.db")

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pooled: bool = False,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> Database:
        """Creates the pool; fails with DatabaseUnavailable when PostgreSQL cannot be reached.
        `pooled`: `dsn` is a pooler in transaction mode (Settings.database_pooled), so no
        statement is cached."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                timeout=connect_timeout,
                command_timeout=60,
                max_inactive_connection_lifetime=300,
                statement_cache_size=0 if pooled else _STATEMENT_CACHE_SIZE,
            )
        except Exception as exc:
            if is_unavailable_error(exc):
                raise DatabaseUnavailable() from exc
            raise
        return cls(pool, dsn=dsn)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; reachability failures inside the block become DatabaseUnavailable."""
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                yield conn
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if not is_unavailable_error(exc):
                raise
            self._log.warning("database_unavailable", error=type(exc).__name__)
            await self.pool.expire_connections()
            raise DatabaseUnavailable() from exc

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Runs `work` on one pooled connection."""
        async with self.connection() as conn:
            return await work(conn)

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query(name), *args)

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(query(name), *args))

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(query(name), *args)

    async def ping(self) -> None:
        """Raises DatabaseUnavailable unless a round trip to PostgreSQL succeeds."""
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")
