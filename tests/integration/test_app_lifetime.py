"""Teardown closes everything, in order, even when one close fails."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from service.config import Settings
from service.db.database import Database
from service.providers.registry import Providers
from service.web.app import HUB_KEY, create_app


class FailingProviders(Providers):
    async def aclose(self) -> None:
        raise RuntimeError("a provider client failed to close")


async def test_a_failing_close_does_not_leave_the_rest_open(
    settings: Settings, database_url: str
) -> None:
    db = await Database.open(database_url, min_size=1, max_size=2)
    app = create_app(settings, database=db, providers=FailingProviders(), run_workers=True)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    hub = app[HUB_KEY]
    with pytest.raises(RuntimeError, match="failed to close"):
        await server.close()
    assert db.pool.is_closing()  # closed after the failing close, not skipped
    assert all(task.done() for task in hub._tasks)
