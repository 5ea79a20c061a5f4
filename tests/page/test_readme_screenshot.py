"""The README's picture of the operator page, from a stack with real jobs: a succeeded job with
its outputs, client webhook deliveries (one retried) and its audit result, beside jobs that
failed, were canceled or still run. Every run checks what the picture shows and saves it under
test-artifacts/; `make screenshot` writes it to docs/operator-page.png (README_SCREENSHOT)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import expect

from simulators import SimulatorConfig
from tests.acceptance.stack import running_stack
from tests.conftest import REPO
from tests.page.conftest import ARTIFACTS, TOKEN, RecordedPage
from tests.page.operator import sign_in

SECRET = "whsec_" + base64.b64encode(b"the-operator-page-demo-secret-32").decode()
PROMPT = {"prompt": "a lighthouse at dawn"}


@pytest.fixture
async def receiver() -> AsyncIterator[str]:
    """A client's webhook endpoint that refuses each message's first try (a retry to show)."""
    seen: set[str] = set()

    async def handle(request: web.Request) -> web.Response:
        webhook_id = request.headers["webhook-id"]
        if webhook_id in seen:
            return web.json_response({"ok": True})
        seen.add(webhook_id)
        return web.json_response({"busy": True}, status=503)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("/hooks"))
    await server.close()


async def test_readme_screenshot(
    browsing: RecordedPage, database_url: str, receiver: str, tmp_path: Path
) -> None:
    page = browsing.page
    async with running_stack(
        database_url,
        sim_config=SimulatorConfig(queue_seconds=0.05, run_seconds=0.1),
        settings={
            "output_store_url": f"file://{tmp_path / 'outputs'}",
            "output_fetch_allow_private": True,  # the simulators listen on 127.0.0.1
            "api_tokens": (TOKEN,),
            "client_webhook_secret": SECRET,
            "client_webhook_retry_schedule": (0.05,),
            "client_webhook_allow_private": True,
        },
    ) as stack:
        stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
        stack.sims.simulator("scenario").update_config({"fail_rate": 1.0})
        failed = await stack.create("scenario", "model_flux-krea-dev", PROMPT)
        await stack.wait_for(failed["id"])
        done = await stack.create("krea", "bfl/flux-1-dev", PROMPT, metadata={"order": "A-16"})
        await stack.wait_for(done["id"])
        stack.sims.simulator("krea").update_config({"queue_seconds": 600})
        canceled = await stack.create("krea", "bfl/flux-1-dev", PROMPT)
        await stack.wait_for(canceled["id"], {"submitted"})
        await stack.http.post(f"/v1/jobs/{canceled['id']}/cancel")
        await stack.wait_for(canceled["id"])
        waiting = await stack.create("krea", "bfl/flux-1-dev", PROMPT)
        await stack.wait_for(waiting["id"], {"submitted"})
        shown = await stack.create(
            "fal", "fal-ai/flux/krea", {**PROMPT, "num_images": 2},
            webhook_url=receiver, metadata={"order": "A-17", "customer": "Ada"},
        )  # fmt: skip
        await stack.wait_for(shown["id"])
        job = await stack.outputs_settled(shown["id"])
        assert job["status"] == "succeeded" and len(job["outputs"]) == 2
        assert all(output["archived_url"] for output in job["outputs"])

        await sign_in(page, f"{stack.service.url}/#{job['id']}")
        await expect(page.locator("#jobs-table tbody tr")).to_have_count(5)
        await expect(page.locator("#job-status")).to_have_text("succeeded")
        figures = page.locator("#outputs figure")
        await expect(figures).to_have_count(2)
        for n in range(2):  # the archived images, fetched with the token, decoded
            image = figures.nth(n).locator("img")
            await expect(image).to_have_js_property("complete", True)
            assert await image.evaluate("img => img.naturalWidth") == job["outputs"][n]["width"]
            assert (await image.get_attribute("src") or "").startswith("blob:")
        # every status change delivered on its second try (the page reads them again while
        # some are pending), both tries listed
        sent = (await stack.http.get(f"/v1/jobs/{job['id']}/webhooks")).json()["deliveries"]
        assert len(sent) >= 2
        delivered = page.locator("#webhooks article .delivery-delivered")
        await expect(delivered).to_have_count(len(sent), timeout=20_000)
        attempts = page.locator("#webhooks article .attempts tbody tr")
        await expect(attempts).to_have_count(2 * len(sent))
        audit = page.locator("#audit")  # sealed a moment after commit; the page re-checks
        await expect(audit).to_have_attribute("data-status", "verified", timeout=15_000)
        await expect(page.locator("#timeline li").last).to_have_attribute(
            "data-type", "output_archived"
        )

        path = Path(os.environ.get("README_SCREENSHOT") or ARTIFACTS / "operator-page.png")
        (REPO / path).parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=REPO / path)
        await browsing.close()  # before the stack it reads from
