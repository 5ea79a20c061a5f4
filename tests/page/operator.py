"""What the tests do on the operator page, as an operator would: sign in, read the list."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page, expect

from tests.page.conftest import TOKEN


async def sign_in(page: Page, url: str, token: str = TOKEN) -> None:
    """Opens the page, which asks for the token, and gives it."""
    await page.goto(url)
    await expect(page.locator("#token-panel")).to_be_visible()
    await expect(page.locator("#main")).to_be_hidden()
    await page.locator("#token-input").fill(token)
    await page.locator("#token-input").press("Enter")


async def listed(page: Page, job_ids: list[str]) -> None:
    """Waits until the list shows exactly these jobs, in this order."""
    rows = page.locator("#jobs-table tbody tr")
    await expect(rows).to_have_count(len(job_ids))
    for n, job_id in enumerate(job_ids):
        await expect(rows.nth(n)).to_have_attribute("data-job", job_id)


async def create_job(
    api: httpx.AsyncClient, provider: str, metadata: dict[str, Any] | None = None
) -> str:
    model, input = {
        "krea": ("bfl/flux-1-dev", {"prompt": "a lighthouse at dawn"}),
        "fal": ("fal-ai/flux/krea", {"prompt": "a lighthouse at dawn"}),
        "scenario": ("model_flux-krea-dev", {"prompt": "a lighthouse at dawn"}),
    }[provider]
    body = {"provider": provider, "model": model, "input": input, "metadata": metadata}
    response = await api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id
