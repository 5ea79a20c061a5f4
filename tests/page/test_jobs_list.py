"""The page's list of jobs and its token: asked once, kept out of every URL."""

from __future__ import annotations

import httpx
from playwright.async_api import expect

from service.config import Settings
from service.db.database import Database
from tests.conftest import PROVIDERS_OFFLINE, Service, start_service
from tests.page.conftest import TOKEN, RecordedPage
from tests.page.operator import create_job, listed, sign_in


async def test_the_list_shows_jobs_and_filters_and_finds_them(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient
) -> None:
    page = browsing.page
    a = await create_job(api, "krea", {"order": "A-17"})
    b = await create_job(api, "fal", {"order": "B-2", "customer": {"name": "Ada"}})
    c = await create_job(api, "scenario")
    assert (await api.post(f"/v1/jobs/{c}/cancel")).json()["status"] == "canceled"

    await sign_in(page, locked_service.url + "/")
    await listed(page, [c, b, a])  # newest first

    filters = page.locator("#filters")
    await filters.get_by_label("Provider").select_option("fal")
    await listed(page, [b])
    await filters.get_by_label("Provider").select_option("")
    await filters.get_by_label("Status").select_option("canceled")
    await listed(page, [c])
    await filters.get_by_label("Status").select_option("")
    await listed(page, [c, b, a])

    find = filters.get_by_label("Find")
    await find.fill("a-17")  # metadata text, any case
    await find.press("Enter")
    await listed(page, [a])
    await find.fill("ada")  # nested metadata
    await filters.get_by_role("button", name="Find").click()
    await listed(page, [b])
    await find.fill(c)  # a job id
    await find.press("Enter")
    await listed(page, [c])
    await find.fill("no such thing")
    await find.press("Enter")
    await listed(page, [])
    await expect(page.locator("#jobs-state")).to_have_text("No jobs found.")


async def test_the_list_pages_with_load_more(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient
) -> None:
    ids = [await create_job(api, "krea") for _ in range(52)]  # the API's page is 50
    await sign_in(browsing.page, locked_service.url + "/")
    await expect(browsing.page.locator("#jobs-table tbody tr")).to_have_count(50)
    await browsing.page.get_by_role("button", name="Load more").click()
    await listed(browsing.page, ids[::-1])
    await expect(browsing.page.get_by_role("button", name="Load more")).to_be_hidden()


async def test_no_token_in_any_url_and_a_refused_token_asks_again(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient
) -> None:
    page = browsing.page
    job_id = await create_job(api, "krea", {"order": "A-17"})

    await sign_in(page, locked_service.url + "/", token="not-the-token")
    await expect(page.locator("#token-error")).to_have_text("That token was refused.")
    await expect(page.locator("#main")).to_be_hidden()
    await page.locator("#token-input").fill(TOKEN)
    await page.get_by_role("button", name="Use token").click()
    await listed(page, [job_id])

    # everything that reads data: a search, one job (fields, live stream, webhooks, audit)
    await page.locator("#filters").get_by_label("Find").fill("A-17")
    await page.locator("#filters").get_by_label("Find").press("Enter")
    await page.get_by_role("link", name=job_id).click()
    await expect(page.locator("#timeline li")).to_have_count(1)
    await expect(page.locator("#stream-state")).to_have_text("(live)")
    # asked once: a reload in the same tab keeps the token (sessionStorage)
    await page.reload()
    await expect(page.locator("#timeline li")).to_have_count(1)
    await expect(page.locator("#token-panel")).to_be_hidden()

    urls = [r.url for r in browsing.requests] + [page.url]
    assert not [u for u in urls if TOKEN in u or "not-the-token" in u], urls
    api_requests = [r for r in browsing.requests if "/v1/" in r.url]
    paths = {r.url.split("?")[0].removeprefix(locked_service.url) for r in api_requests}
    assert {"/v1/jobs", f"/v1/jobs/{job_id}", "/v1/events/stream"} <= paths
    # the first list was asked without a token (the page cannot know one is needed)
    authorizations = [await r.header_value("authorization") for r in api_requests]
    assert authorizations[0] is None
    assert set(authorizations[1:]) == {"Bearer not-the-token", f"Bearer {TOKEN}"}

    await page.get_by_role("button", name="Forget token").click()
    await expect(page.locator("#token-panel")).to_be_visible()


async def test_without_api_tokens_the_page_needs_none(
    browsing: RecordedPage, database_url: str
) -> None:
    settings = Settings.model_validate({"host": "127.0.0.1", "port": 0, **PROVIDERS_OFFLINE})
    db = await Database.open(database_url, min_size=1, max_size=5)
    svc = await start_service(settings, db)
    try:
        async with httpx.AsyncClient(base_url=svc.url) as open_api:
            job_id = await create_job(open_api, "fal")
        await browsing.page.goto(svc.url + "/")
        await listed(browsing.page, [job_id])
        await expect(browsing.page.locator("#token-panel")).to_be_hidden()
        await expect(browsing.page.get_by_role("button", name="Forget token")).to_be_hidden()
    finally:
        await browsing.close()  # before the server it reads from
        await svc.server.close()
