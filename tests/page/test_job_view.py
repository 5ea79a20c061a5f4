"""One job on the operator page, against the whole stack (simulators, runner, callbacks): its
timeline follows the job live, resumes after a dropped stream, and Cancel reaches the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from playwright.async_api import Dialog, Route, expect

from simulators import SimulatorConfig
from simulators.images import solid_png
from tests.acceptance.stack import Stack, running_stack
from tests.conftest import Service
from tests.page.conftest import TOKEN, RecordedPage
from tests.page.operator import create_job, sign_in

KREA = ("krea", "bfl/flux-1-dev", {"prompt": "a lighthouse at dawn"})
LIVE = {"submitted", "queued", "running"}


@pytest.fixture
async def slow_stack(database_url: str, browsing: RecordedPage) -> AsyncIterator[Stack]:
    """Jobs that stay queued for a minute unless canceled; /v1/* behind TOKEN."""
    async with running_stack(
        database_url,
        sim_config=SimulatorConfig(queue_seconds=60, run_seconds=60),
        settings={"api_tokens": (TOKEN,)},
    ) as stack:
        stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
        yield stack
        await browsing.close()  # before the stack it reads from


async def timeline_types(browsing: RecordedPage) -> list[str]:
    return await browsing.page.locator("#timeline li").evaluate_all(
        "items => items.map(item => item.dataset.type)"
    )


async def test_a_job_shows_its_timeline_and_new_events_arrive_live(
    browsing: RecordedPage, slow_stack: Stack
) -> None:
    page = browsing.page
    job_id = (await slow_stack.create(*KREA))["id"]
    await slow_stack.wait_for(job_id, LIVE)
    history = await slow_stack.events(job_id)

    await sign_in(page, f"{slow_stack.service.url}/#{job_id}")
    await expect(page.locator("#job-title")).to_have_text(job_id)
    await expect(page.locator("#job-status")).to_have_text("submitted")
    await expect(page.locator("#timeline li")).to_have_count(len(history))
    await expect(page.locator("#stream-state")).to_have_text("(live)")
    await expect(page.locator("#fields")).to_contain_text("bfl/flux-1-dev")
    await page.evaluate("window.sameDocument = true")  # gone if the page reloads

    assert (await slow_stack.http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    await expect(page.locator('#timeline li[data-type="cancel_requested"]')).to_have_count(1)
    # the provider confirms: the status moves on the page, its cancel button goes
    await expect(page.locator("#job-status")).to_have_text("canceled")
    await expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    assert await page.evaluate("window.sameDocument") is True
    final = [e["type"] for e in await slow_stack.events(job_id)]
    await expect(page.locator("#timeline li")).to_have_count(len(final))
    assert await timeline_types(browsing) == final  # in order, none twice


async def test_the_timeline_resumes_after_a_dropped_stream_with_last_event_id(
    browsing: RecordedPage, slow_stack: Stack
) -> None:
    page = browsing.page
    job_id = (await slow_stack.create(*KREA))["id"]
    await slow_stack.wait_for(job_id, LIVE)
    history = await slow_stack.events(job_id)
    first, rest = history[:1], history[1:]
    assert rest
    streams: list[dict[str, str]] = []

    async def drop_the_first_stream(route: Route) -> None:
        streams.append(await route.request.all_headers())
        if len(streams) > 1:
            await route.continue_()
            return
        # the first connection carries one event, then ends as a dropped connection would
        body = b"retry: 50\n\n" + b"".join(
            b"id: %d\ndata: %s\n\n" % (e["id"], orjson.dumps(e)) for e in first
        )
        await route.fulfill(status=200, content_type="text/event-stream", body=body)

    await page.route("**/v1/events/stream?*", drop_the_first_stream)
    await sign_in(page, f"{slow_stack.service.url}/#{job_id}")
    await expect(page.locator("#timeline li")).to_have_count(len(history))
    assert "last-event-id" not in streams[0]
    assert streams[1]["last-event-id"] == str(first[-1]["id"])
    assert await timeline_types(browsing) == [e["type"] for e in history]

    assert (await slow_stack.http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    await expect(page.locator("#job-status")).to_have_text("canceled")  # live after resuming


async def test_cancel_from_the_page_reaches_the_provider(
    browsing: RecordedPage, slow_stack: Stack
) -> None:
    page = browsing.page
    job_id = (await slow_stack.create(*KREA))["id"]
    await slow_stack.wait_for(job_id, LIVE)
    await sign_in(page, f"{slow_stack.service.url}/#{job_id}")
    await expect(page.locator("#job-status")).to_have_text("submitted")

    dialogs: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await page.get_by_role("button", name="Cancel job").click()
    await expect(page.locator("#notice")).to_have_text(
        f"Cancellation of {job_id} requested; the provider is being asked to stop it."
    )
    await expect(page.locator("#job-status")).to_have_text("canceled")
    assert dialogs == [f"Cancel job {job_id}?"]

    # the provider's side: one cancel asked and the job cancelled there
    async with httpx.AsyncClient() as sim:
        stats = (await sim.get(f"{slow_stack.sims.control_url('krea')}/stats")).json()
    assert (stats["cancels"], stats["jobs_cancelled"]) == (1, 1)
    sent = [e for e in await slow_stack.events(job_id) if e["type"] == "cancel_sent"]
    assert [e["data"]["accepted"] for e in sent] == [True]


async def test_cancel_of_a_job_that_just_finished_says_so(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient
) -> None:
    page = browsing.page
    job_id = await create_job(api, "fal")
    # the page hears nothing of the job's end: its stream is cut before it opens
    await page.route("**/v1/events/stream?*", lambda route: route.abort())
    await sign_in(page, f"{locked_service.url}/#{job_id}")
    await expect(page.locator("#job-status")).to_have_text("accepted")
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).json()["status"] == "canceled"

    page.on("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Cancel job").click()
    await expect(page.locator("#notice")).to_have_text(
        f"Nothing to cancel: {job_id} had already finished."
    )
    await expect(page.locator("#job-status")).to_have_text("canceled")
    await expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()


async def test_archived_outputs_are_fetched_with_the_token_and_shown(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient
) -> None:
    """Thumbnails come from `archived_url` with the token in a header, shown from a blob: URL;
    an output not archived yet links to the provider. The job's outputs are given to the page
    here (archiving itself is another part's, tested there)."""
    page = browsing.page
    job_id = await create_job(api, "fal")
    outputs = [
        {"url": "https://provider.example/a.png", "content_type": "image/png", "width": 32,
         "height": 16, "sha256": "ab" * 32, "bytes": 99, "archived_url": f"/v1/jobs/{job_id}/outputs/0"},
        {"url": "https://provider.example/b.png", "content_type": "image/png", "width": 32,
         "height": 16, "sha256": None, "bytes": None, "archived_url": None},
    ]  # fmt: skip
    image_requests: list[str | None] = []

    async def job_with_outputs(route: Route) -> None:
        response = await route.fetch()
        await route.fulfill(response=response, json={**await response.json(), "outputs": outputs})

    async def archived_image(route: Route) -> None:
        image_requests.append(await route.request.header_value("authorization"))
        await route.fulfill(status=200, content_type="image/png", body=solid_png(32, 16))

    await page.route(f"**/v1/jobs/{job_id}", job_with_outputs)
    await page.route(f"**/v1/jobs/{job_id}/outputs/0", archived_image)
    await sign_in(page, f"{locked_service.url}/#{job_id}")

    figures = page.locator("#outputs figure")
    await expect(figures).to_have_count(2)
    image = figures.nth(0).get_by_role("img", name=f"Output 1 of {job_id}")
    await expect(image).to_have_js_property("naturalWidth", 32)
    assert (await image.get_attribute("src") or "").startswith("blob:")
    assert image_requests == [f"Bearer {TOKEN}"]
    await expect(figures.nth(0)).to_contain_text(f"sha256 {'ab' * 6}")
    await expect(figures.nth(1)).to_contain_text("not archived yet")
    link = figures.nth(1).get_by_role("link", name="provider's URL")
    await expect(link).to_have_attribute("href", "https://provider.example/b.png")
    await expect(figures.nth(1).locator("img")).to_have_count(0)
