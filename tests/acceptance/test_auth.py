"""Bearer tokens on /v1/* when API_TOKENS is set; operations endpoints stay open."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LOCKED_TOKENS as TOKENS


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
