"""Shared fixtures: a real PostgreSQL, a template database migrated once per session, a fresh
database cloned from it for each test, and the whole app served over real HTTP.

PostgreSQL is the embedded one (under .data/test-postgres, fsync off for speed), or a cluster of
the build TEST_POSTGRES_BIN names (tests/postgres_servers.py), unless DATABASE_URL is set, in
which case that server hosts the template and the per-test databases.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.config import Settings
from service.db.database import Database
from service.db.embedded import EmbeddedPostgres
from service.db.migrations import apply_migrations
from service.logs import QUIET_LOGGERS, configure_logging
from service.store import JobStore
from service.store.postgres import PostgresJobStore
from service.web.app import create_app
from tests.pgbouncer import PgBouncer
from tests.postgres_servers import ClusterServer, server_for_tests

REPO = Path(__file__).resolve().parents[1]


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


#: Tests that share a costly session or module fixture run in one xdist process (`--dist
#: loadgroup`): the operator page's browser, the wheel's virtualenv.
SHARED_FIXTURE_GROUPS = {"tests/page/": "page", "tests/integration/test_wheel_install.py": "wheel"}


#: Tests handed out first: the longest one (tests/security runs tests/acceptance in a process of
#: its own, one test at a time) starts while the other processes share the rest.
FIRST = ("tests/security/",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for prefix, group in SHARED_FIXTURE_GROUPS.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))  # stable: the rest in order


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_test_logging()


@pytest.fixture
def logging_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test that reconfigures logging (onto a captured stdout, or by running the command
    line): afterwards the real stdout and the session's configuration come back, since a logger
    left on a closed stream would fail every later test that logs."""
    yield
    monkeypatch.undo()
    structlog.reset_defaults()
    configure_test_logging()


def configure_test_logging() -> None:
    """The service's logging pipeline at TEST_LOG_LEVEL (default warning) and TEST_LOG_FORMAT
    (default console). At debug every library logger is opened up too (httpx, aiohttp.access,
    asyncio...): that is how tests/security reads the logs, as an attacker would."""
    level = os.environ.get("TEST_LOG_LEVEL", "warning").lower()
    configure_logging(level=level, fmt=os.environ.get("TEST_LOG_FORMAT", "console"))
    if level == "debug":
        logging.getLogger().setLevel(logging.DEBUG)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def session_server() -> Iterator[EmbeddedPostgres | ClusterServer | None]:
    """The server this session started, or None when DATABASE_URL names one. Under
    pytest-xdist each worker starts its own (a data directory per worker)."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    server = server_for_tests(REPO / ".data" / f"test-postgres{'-' + worker if worker else ''}")
    server.start()
    # Tests trade durability for speed; make run, make bench and production keep the defaults.
    server.sql("ALTER SYSTEM SET fsync = off")
    server.sql("ALTER SYSTEM SET synchronous_commit = off")
    server.sql("ALTER SYSTEM SET full_page_writes = off")
    server.sql("SELECT pg_reload_conf()")
    yield server
    server.close()


@pytest.fixture(scope="session")
def pg_server_dsn(session_server: EmbeddedPostgres | ClusterServer | None) -> str:
    """DSN of a maintenance database on the test server."""
    if session_server is None:
        return os.environ["DATABASE_URL"]
    return session_server.dsn()


@pytest.fixture(scope="session")
def pg_server_log(session_server: EmbeddedPostgres | ClusterServer | None) -> Path | None:
    """The file the session's server logs to (None for a server of DATABASE_URL)."""
    if session_server is None:
        return None
    if isinstance(session_server, ClusterServer):
        return session_server.log
    return session_server.pgdata / "log"


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


@pytest.fixture(scope="session")
async def template_database(pg_server_dsn: str) -> AsyncIterator[str]:
    """Name of a database migrated once for the whole session, cloned by every test."""
    name = f"imagejobs_template_{secrets.token_hex(4)}"
    admin = await _admin(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_with_database(pg_server_dsn, name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(pg_server_dsn: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of its own for one test."""
    name = f"imagejobs_test_{secrets.token_hex(6)}"
    admin = await _admin(pg_server_dsn)
    try:
        await admin.execute(
            f'CREATE DATABASE "{name}" TEMPLATE "{template_database}" STRATEGY FILE_COPY'
        )
        yield dsn_with_database(pg_server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_database(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database of its own with nothing in it (not migrated)."""
    name = f"imagejobs_empty_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_with_database(pg_server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = await Database.open(database_url, min_size=1, max_size=5)
    yield db
    await db.close()


@pytest.fixture
def store(database: Database) -> JobStore:
    return PostgresJobStore(database)


# Every provider enabled, pointing at a port where nothing listens: API tests never reach them
# (their runner is off); provider tests use the simulators instead.
NOWHERE = "http://127.0.0.1:9"
PROVIDERS_OFFLINE = {
    "krea_api_url": NOWHERE, "krea_api_token": "t", "fal_queue_url": NOWHERE, "fal_key": "k",
    "fal_jwks_url": NOWHERE, "scenario_api_url": NOWHERE, "scenario_api_key": "k",
    "scenario_api_secret": "s",
}  # fmt: skip


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({"host": "127.0.0.1", "port": 0, **PROVIDERS_OFFLINE})


class Service:
    """The app on a real socket, with the base URL to reach it."""

    def __init__(self, server: TestServer, app: web.Application) -> None:
        self.server = server
        self.app = app
        self.url = str(server.make_url("")).rstrip("/")


async def start_service(
    settings: Settings, database: Database, *, run_workers: bool = False, **options: Any
) -> Service:
    app = create_app(settings, database=database, run_workers=run_workers, **options)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return Service(server, app)


@pytest.fixture
async def service(settings: Settings, database_url: str) -> AsyncIterator[Service]:
    db = await Database.open(database_url, min_size=1, max_size=5)
    svc = await start_service(settings, db)
    yield svc
    await svc.server.close()


#: The API tokens of `locked` (tests of the bearer token and of what needs none).
LOCKED_TOKENS = ("tok-alpha-0123456789", "tok-beta-9876543210")


@pytest.fixture
async def locked(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The service with API tokens set (LOCKED_TOKENS), and a client that holds none."""
    settings = Settings.model_validate(
        {"host": "127.0.0.1", "port": 0, "api_tokens": LOCKED_TOKENS, **PROVIDERS_OFFLINE}
    )
    db = await Database.open(database_url, min_size=1, max_size=2)
    svc = await start_service(settings, db)
    async with httpx.AsyncClient(base_url=svc.url) as client:
        yield client
    await svc.server.close()


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def pgbouncer(pg_server_dsn: str) -> AsyncIterator[PgBouncer]:
    """Debian's PgBouncer in transaction mode before the test server, two server connections
    per database (tests/pgbouncer.py)."""
    bouncer = PgBouncer(pg_server_dsn, pool_size=2)
    try:
        await bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooled_url(pgbouncer: PgBouncer, database_url: str) -> str:
    """This test's database through PgBouncer in transaction mode (DATABASE_URL of a pooled
    instance; `database_url` is then its DATABASE_LISTEN_URL)."""
    return pgbouncer.url(database_url)
