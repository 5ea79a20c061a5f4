"""Migrations: they give exactly the schema file, are safe to run concurrently, and refuse drift."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import asyncpg
import pytest

import service.db.migrations as migrations_module
from service.db.migrations import Migration, MigrationError, apply_migrations, load_migrations
from service.db.sql_files import SqlFilesError, sql_dir
from tests.postgres_servers import client_program


def schema_dump(dsn: str) -> str:
    """pg_dump's schema of a database, without the lines that differ between any two dumps."""
    out = subprocess.run(  # noqa: S603
        [str(client_program("pg_dump")), "--schema-only", "--no-owner", "--no-privileges", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [
        line
        for line in out.splitlines()
        if line.strip() and not line.startswith("--") and not re.match(r"\\(un)?restrict ", line)
    ]
    return "\n".join(lines)


async def test_migrations_give_the_schema_file(database_url: str, empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute((sql_dir() / "schema.sql").read_text(encoding="utf-8"))
    finally:
        await conn.close()
    migrated = schema_dump(database_url)
    from_file = schema_dump(empty_database)
    assert "CREATE TABLE public.job_events" in migrated
    assert migrated == from_file


async def test_instances_starting_together_apply_each_migration_once(empty_database: str) -> None:
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        await instances_apply_each_migration_once(conns)
    finally:
        for c in conns:
            await c.close()


async def instances_apply_each_migration_once(conns: list[asyncpg.Connection]) -> None:
    """Every connection migrates at once: they take turns, and between them they apply every
    migration once, in order (tests/integration/test_pgbouncer.py: the same through PgBouncer)."""
    results = await asyncio.gather(*(apply_migrations(c) for c in conns))
    applied = sorted(m.version for result in results for m in result)
    assert applied == [m.version for m in load_migrations()]  # each once, by one of them
    for result in results:  # each instance's share in order
        assert [m.version for m in result] == sorted(m.version for m in result)
    versions = await conns[0].fetchval(
        "SELECT array_agg(version ORDER BY version) FROM schema_migrations"
    )
    assert versions == [m.version for m in load_migrations()]


async def test_a_changed_migration_stops_the_start(database_url: str) -> None:
    first = load_migrations()[0]
    edited = [
        Migration(first.version, first.name, first.sql + "\n-- edited"),
        *load_migrations()[1:],
    ]
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, edited)
    finally:
        await conn.close()


async def test_a_database_newer_than_the_code_stops_the_start(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(MigrationError, match="newer than this release"):
            await apply_migrations(conn, load_migrations()[:-1])
    finally:
        await conn.close()


async def test_no_migration_files_stop_the_start_and_change_nothing(
    empty_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "migrations").mkdir()
    monkeypatch.setattr(migrations_module, "sql_dir", lambda: tmp_path)
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(SqlFilesError, match=f"no migration files .* in {tmp_path}"):
            await apply_migrations(conn)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()
