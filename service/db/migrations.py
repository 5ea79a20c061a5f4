"""Forward-only migrations from sql/migrations, applied at start under an advisory lock.

Each migration runs in its own transaction with its version row, and that transaction first
takes a transaction-scoped advisory lock and reads what is applied: several instances starting
at once take turns, migration by migration, and each migration is applied exactly once. Nothing
outlives a transaction, so the same code works on a direct connection and through a pooler in
transaction mode (PgBouncer), where a session-level lock would stay on whichever server
connection took it. A migration file that changed after it was applied stops the start (the
schema would no longer be what the files say).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import asyncpg

from service.db.sql_files import SqlFilesError, sql_dir, sql_files

MIGRATION_LOCK_KEY = 7428061942
_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


class MigrationError(Exception):
    """The database's applied migrations do not match the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files in version order; versions must be 1, 2, 3, ... with no gap.

    A missing or empty directory is an error (SqlFilesError), never "nothing to apply": a
    service started on a database with no schema would only fail later, and less clearly."""
    directory = sql_dir() / "migrations" if directory is None else directory
    paths = sql_files(directory)
    if not paths:
        raise SqlFilesError(f"no migration files (NNNN_name.sql) in {directory}")
    migrations = []
    for path in paths:
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        migrations.append(
            Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8"))
        )
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing")
    return migrations


async def apply_migrations(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Applies what is not yet applied; returns the migrations applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    done: list[Migration] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            applied = await _applied(conn, migrations)
            pending = next((m for m in migrations if m.version not in applied), None)
            if pending is None:
                return done
            await conn.execute(pending.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                pending.version,
                pending.name,
                pending.checksum,
            )
        done.append(pending)


async def _applied(conn: asyncpg.Connection, migrations: list[Migration]) -> set[int]:
    """The versions applied so far, once checked against the files: none unknown, none changed."""
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer     PRIMARY KEY,
               name       text        NOT NULL,
               checksum   text        NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row["checksum"] for row in rows}
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} that this code does not know: "
            "it is newer than this release"
        )
    for migration in migrations:
        checksum = applied.get(migration.version)
        if checksum is not None and checksum != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} changed after it "
                "was applied; migrations are forward-only, add a new one instead"
            )
    return set(applied)
