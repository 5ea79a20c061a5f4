"""Bearer tokens on /v1/* when API_TOKENS is set; operations endpoints stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Settings
from service.db.database import Database
from tests.conftest import PROVIDERS_OFFLINE, start_service

TOKENS = ("tok-alpha-0123456789", "tok-beta-9876543210")


@pytest.fixture
async def locked(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.model_validate(
        {"host": "127.0.0.1", "port": 0, "api_tokens": TOKENS, **PROVIDERS_OFFLINE}
    )
    db = await Database.open(database_url, min_size=1, max_size=2)
    svc = await start_service(settings, db)
    async with httpx.AsyncClient(base_url=svc.url) as client:
        yield client
    await svc.server.close()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong-token",
        "Bearer",
        "Basic dG9rLWFscGhhOg==",
        f"Bearer {TOKENS[0]}x",
        TOKENS[0],
    ],
)
async def test_missing_or_wrong_token_is_401(locked: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for response in (
        await locked.get("/v1/jobs", headers=headers),
        await locked.post("/v1/jobs", json={}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("token", TOKENS)
async def test_each_configured_token_is_accepted(locked: httpx.AsyncClient, token: str) -> None:
    response = await locked.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_operations_endpoints_need_no_token(locked: httpx.AsyncClient) -> None:
    assert (await locked.get("/healthz")).status_code == 200
    assert (await locked.get("/readyz")).status_code == 200
