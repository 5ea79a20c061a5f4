"""The audit chain through the API, checked as an outside auditor would: with nothing but the
API's answers, the standard json module, hashlib and the `rfc8785` package."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import rfc8785

from tests.acceptance.stack import Stack, running_stack

pytestmark = pytest.mark.asyncio


async def sealed_through(database_url: str, event_id: int) -> None:
    """Returns once the sealer has sealed `event_id` (it NOTIFYs audit_sealed after each
    commit); no clock involved."""
    conn = await asyncpg.connect(database_url)
    done = asyncio.Event()

    def on_sealed(*args: Any) -> None:
        if int(args[3]) >= event_id:
            done.set()

    try:
        await conn.add_listener("audit_sealed", on_sealed)
        if await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM event_seals") >= event_id:
            return
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await conn.close()


def outside_hash(event: dict[str, Any]) -> str:
    body = {key: value for key, value in event.items() if key != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, settings={"audit_checkpoint_interval_s": 0.2}) as stack:
        yield stack


async def finished_job(stack: Stack, provider: str, model: str, seed: int) -> dict[str, Any]:
    job = await stack.create(provider, model, {"prompt": "a lighthouse at dawn", "seed": seed})
    await stack.wait_for(job["id"])
    return job


async def test_an_outside_verifier_gets_the_same_hashes_from_the_api_answer(
    stack: Stack, database_url: str
) -> None:
    jobs = [
        await finished_job(stack, "scenario", "model_flux-krea-dev", 7),
        await finished_job(stack, "fal", "fal-ai/flux/krea", 2**60),  # beyond I-JSON's integers
        await finished_job(stack, "krea", "bfl/flux-1-dev", 3),
    ]
    last_id = max([(await stack.events(job["id"]))[-1]["id"] for job in jobs])
    await sealed_through(database_url, last_id)
    for job in jobs:
        response = await stack.http.get(f"/v1/jobs/{job['id']}/events")
        events = json.loads(response.text)["events"]  # the standard library, as an outsider
        assert len(events) >= 3
        prev = None
        for event in events:
            assert event["prev_hash"] == prev
            assert event["hash"] == outside_hash(event), event
            prev = event["hash"]
        audit = (await stack.http.get(f"/v1/jobs/{job['id']}/audit")).json()
        assert audit["status"] == "verified"
        assert audit["events"] == audit["sealed"] == len(events)
        assert audit["failure"] is None


async def test_checkpoints_can_be_recomputed_from_the_api(stack: Stack, database_url: str) -> None:
    job = await finished_job(stack, "scenario", "model_flux-krea-dev", 1)
    last_id = (await stack.events(job["id"]))[-1]["id"]
    await sealed_through(database_url, last_id)
    body = await _checkpoints_through(stack, last_id)
    assert body["public_key"] is None
    # Every job's events (the pokes below made more jobs), as an outside auditor reads them.
    jobs = (await stack.http.get("/v1/jobs?limit=200")).json()["jobs"]
    events = [event for j in jobs for event in await stack.events(j["id"])]
    previous: dict[str, Any] | None = None
    for checkpoint in body["checkpoints"]:
        assert checkpoint["prev_digest"] == (previous["digest"] if previous else None)
        low = previous["last_event_id"] if previous else 0
        changed: dict[str, tuple[int, str]] = {}
        for event in sorted(events, key=lambda e: e["id"]):
            if low < event["id"] <= checkpoint["last_event_id"]:
                changed[event["job_id"]] = (event["id"], event["hash"])  # the latest wins
        expected = hashlib.sha256(rfc8785.dumps({
            "prev_digest": checkpoint["prev_digest"], "last_event_id": checkpoint["last_event_id"],
            "heads": [[job_id, head[1]] for job_id, head in sorted(changed.items())],
        })).hexdigest()  # fmt: skip
        assert checkpoint["digest"] == expected
        assert checkpoint["heads"] == len(changed)
        previous = checkpoint
    assert any(checkpoint["heads"] for checkpoint in body["checkpoints"])


async def _checkpoints_through(stack: Stack, event_id: int) -> dict[str, Any]:
    """The checkpoint list once one covers `event_id` (the sealer makes one every 0.2 s here;
    each wake is a committed checkpoint, awaited through the log's NOTIFY)."""
    async with stack.watcher.changed:
        while True:
            body: dict[str, Any] = (await stack.http.get("/v1/audit/checkpoints")).json()
            if body["checkpoints"] and body["checkpoints"][-1]["last_event_id"] >= event_id:
                return body
            # No event is due: poke the log so the sealer wakes and checkpoints again.
            await stack.create("scenario", "model_flux-krea-dev", {"prompt": "poke"})
            await stack.watcher.changed.wait()


async def test_a_tampered_event_fails_the_jobs_verification(
    stack: Stack, database_url: str
) -> None:
    job = await finished_job(stack, "scenario", "model_flux-krea-dev", 5)
    events = await stack.events(job["id"])
    await sealed_through(database_url, events[-1]["id"])
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE job_events SET source = 'api' WHERE id = $1", events[1]["id"]
            )
    finally:
        await conn.close()
    audit = (await stack.http.get(f"/v1/jobs/{job['id']}/audit")).json()
    assert audit["status"] == "failed"
    assert audit["failure"]["event_id"] == events[1]["id"]
    assert audit["failure"]["seq"] == 2
    assert "edited" in audit["failure"]["reason"]


async def test_audit_endpoints_refuse_bad_input(stack: Stack) -> None:
    missing = await stack.http.get("/v1/jobs/job_01J00000000000000000000000/audit")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    for query in ("limit=0", "limit=1001", "after=-1", "limit=x"):
        response = await stack.http.get(f"/v1/audit/checkpoints?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["details"][0]["loc"][0] == "query"
