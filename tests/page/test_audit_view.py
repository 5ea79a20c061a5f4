"""The audit chain on the operator page: a job's verification shown prominently, and an event
edited in the database afterwards (as a superuser, triggers disabled) shown as a failure."""

from __future__ import annotations

import asyncpg
import httpx
from playwright.async_api import expect

from tests.conftest import Service
from tests.page.conftest import RecordedPage
from tests.page.operator import create_job, sign_in

SEALING_S = 15_000  # ms: events are sealed a moment after their commit; the page re-checks


async def test_a_tampered_event_shows_as_a_failed_verification(
    browsing: RecordedPage, locked_service: Service, api: httpx.AsyncClient, database_url: str
) -> None:
    page = browsing.page
    job_id = await create_job(api, "krea", {"order": "A-17"})
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    events = (await api.get(f"/v1/jobs/{job_id}/events")).json()["events"]
    assert len(events) == 3

    await sign_in(page, f"{locked_service.url}/#{job_id}")
    audit = page.locator("#audit")
    await expect(audit).to_have_attribute("data-status", "verified", timeout=SEALING_S)
    await expect(audit).to_contain_text("Audit chain verified (3 of 3 events sealed).")
    await expect(page.locator("#timeline .hash").first).to_contain_text("hash ")
    await expect(page.locator("#timeline .event.tampered")).to_have_count(0)

    target = events[1]  # cancel_requested
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                """UPDATE job_events SET data = data || '{"note": "forged"}' WHERE id = $1""",
                target["id"],
            )
    finally:
        await conn.close()

    await page.get_by_role("button", name="Verify again").click()
    await expect(audit).to_have_attribute("data-status", "failed")
    failure = (await api.get(f"/v1/jobs/{job_id}/audit")).json()["failure"]
    assert failure["event_id"] == target["id"]
    await expect(audit).to_contain_text(
        f"Audit chain FAILED: {failure['reason']} at event #{target['seq']} (id {target['id']})"
    )
    tampered = page.locator("#timeline .event.tampered")
    await expect(tampered).to_have_count(1)
    await expect(tampered).to_have_attribute("data-type", "cancel_requested")
    # the colour says it at a glance: red for a failure
    colour = await audit.evaluate("box => getComputedStyle(box).borderLeftColor")
    assert colour == "rgb(163, 32, 28)", colour
