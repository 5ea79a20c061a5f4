"""DATABASE_LISTEN_URL: the LISTEN connection goes where it says (a direct connection beside a
pooler in transaction mode), while the pool keeps DATABASE_URL."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from service.config import Settings
from service.db.database import Database
from service.events.hub import LISTENER_NAME
from service.web.app import HUB_KEY
from tests.conftest import start_service


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:@{host}"))


async def test_the_listen_connection_uses_database_listen_url(
    settings: Settings, database_url: str
) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'listen_probe') "
            "THEN CREATE ROLE listen_probe LOGIN; END IF; END $$"
        )
        listen_dsn = as_role(database_url, "listen_probe")
        db = await Database.open(database_url, min_size=1, max_size=2)
        service = await start_service(
            settings.model_copy(update={"database_listen_url": SecretStr(listen_dsn)}),
            db,
            run_workers=True,
        )
        try:
            await asyncio.wait_for(service.app[HUB_KEY].listen_connected.wait(), 10)
            roles = {
                row["application_name"]: row["usename"]
                for row in await admin.fetch(
                    "SELECT application_name, usename FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            }
            assert roles[LISTENER_NAME] == "listen_probe"
            assert roles.get("imagejobs") != "listen_probe"  # the pool keeps DATABASE_URL's
        finally:
            await service.server.close()
    finally:
        await admin.close()
