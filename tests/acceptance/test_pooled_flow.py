"""The whole job flow with DATABASE_URL at PgBouncer in transaction mode (two server connections
for the database) and DATABASE_LISTEN_URL straight at the server: a job of each provider and a
routed one run to the end with their outputs archived, the event stream follows a job live, and
each job's audit chain is sealed and verifies (a streamed read through the pooler)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.web.app import SETTINGS_KEY
from tests.acceptance.stack import Stack, running_stack
from tests.acceptance.test_audit_api import sealed_through
from tests.acceptance.test_event_stream import collect, events_of, reached_terminal, unsealed

pytestmark = pytest.mark.timeout(120)

JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("krea", "bfl/flux-1-dev", {"width": 768, "height": 512}),
    ("fal", "fal-ai/flux/krea", {"num_images": 2}),
    ("scenario", "model_flux-krea-dev", {}),
    ("auto", "flux-1-krea-dev", {}),  # routed: fal first (ROUTES' default)
]


@pytest.fixture
async def stack(database_url: str, pooled_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = {
        "output_store_url": f"file://{tmp_path / 'outputs'}",
        "output_fetch_allow_private": True,  # the simulators listen on 127.0.0.1
        "audit_checkpoint_interval_s": 0.2,
        "stream_heartbeat_s": 0.2,
    }
    async with running_stack(database_url, pooled_url=pooled_url, settings=settings) as stack:
        yield stack


async def test_jobs_run_to_the_end_through_pgbouncer(stack: Stack, database_url: str) -> None:
    assert stack.service.app[SETTINGS_KEY].database_pooled
    tag = secrets.token_hex(4)
    created = [
        await stack.create(provider, model, {"prompt": f"a lighthouse #{tag}-{n}", **extra})
        for n, (provider, model, extra) in enumerate(JOBS)
    ]
    followed = created[0]["id"]
    stream = asyncio.create_task(
        collect(stack.http, {"job_id": followed}, until=reached_terminal(followed))
    )
    for job in created:
        done = await stack.outputs_settled(job["id"])
        assert done["status"] == "succeeded", done
        assert all(output["sha256"] and output["archived_url"] for output in done["outputs"])
        events = await stack.events(job["id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        steps = [e["to_status"] for e in events if e["type"] == "status_changed"]
        assert steps[0] == "accepted" and steps[-1] == "succeeded"
        assert len(steps) == len(set(steps))  # each step once
    streamed = events_of(await asyncio.wait_for(stream, 20))  # live, up to its terminal step
    assert unsealed(streamed) == unsealed((await stack.events(followed))[: len(streamed)])
    prompts = [
        job.prompt
        for provider in ("krea", "fal", "scenario")
        for job in stack.sims.simulator(provider).jobs.values()
    ]
    assert sorted(p.rsplit("-", 1)[-1] for p in prompts if tag in p) == ["0", "1", "2", "3"]
    last = max([(await stack.events(job["id"]))[-1]["id"] for job in created])
    await sealed_through(database_url, last)
    for job in created:
        audit = (await stack.http.get(f"/v1/jobs/{job['id']}/audit")).json()
        assert (audit["status"], audit["failure"]) == ("verified", None), audit
        assert audit["events"] == audit["sealed"] == len(await stack.events(job["id"]))
