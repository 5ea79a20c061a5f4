"""What `make run` adds for the operator page: demo jobs made through the API, and the page's
URL printed first."""

from __future__ import annotations

import httpx

from service.config import Settings
from service.demo import banner, create_demo_jobs
from tests.conftest import Service


async def test_demo_jobs_are_created_through_the_api(
    service: Service, http: httpx.AsyncClient
) -> None:
    job_ids = await create_demo_jobs(service.url, "unused-no-tokens-here", ["krea", "scenario"])
    jobs = {job["id"]: job for job in (await http.get("/v1/jobs")).json()["jobs"]}
    assert set(jobs) == set(job_ids)
    assert [jobs[job_id]["provider"] for job_id in job_ids] == ["krea", "scenario"]
    assert jobs[job_ids[0]]["metadata"] == {"demo": True, "order": "demo-krea"}


def test_the_banner_starts_with_the_operator_page(settings: Settings) -> None:
    text = banner(
        settings, "demo-tok", simulated={"krea": "http://127.0.0.1:1"},
        webhook_secret="whsec_x", demo_jobs=["job_A"],
    )  # fmt: skip
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith(f"  Operator page: {settings.base_url}/ ")
    assert "Demo jobs, one per simulated provider: job_A" in text
    assert "curl -s -X POST" in text  # the curls are still printed
