"""`GET /v1/events/stream`: every event, in order, live; resumes with no gap and no repeat;
survives the loss of its LISTEN connection; correct while two instances do the work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from service.db.database import Database
from service.events.hub import LISTENER_NAME
from service.web.app import HUB_KEY, RUNNER_KEY
from tests.acceptance.stack import Stack, running_stack, stack_settings
from tests.conftest import start_service


@dataclass
class Frame:
    id: int | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None
    retry: int | None = None
    fields: list[str] = field(default_factory=list)


def unsealed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without their audit seal (prev_hash, hash): a live event is sent as committed,
    before the sealer hashes it; its content is what must match."""
    return [{k: v for k, v in e.items() if k not in ("prev_hash", "hash")} for e in events]


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parses a text/event-stream into frames (one per blank-line-terminated block)."""
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if frame.fields:
                yield frame
            frame = Frame()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        frame.fields.append(name)
        if name == "":
            frame.comment = value
        elif name == "id":
            frame.id = int(value)
        elif name == "data":
            frame.data = orjson.loads(value)
        elif name == "retry":
            frame.retry = int(value)


async def collect(
    client: httpx.AsyncClient,
    params: dict[str, Any],
    *,
    until: Any,
    headers: dict[str, str] | None = None,
) -> list[Frame]:
    """Frames of one connection, until `until(frames)` is true (then the client disconnects)."""
    seen: list[Frame] = []
    async with client.stream(
        "GET", "/v1/events/stream", params=params, headers=headers or {}
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for frame in frames(response):
            seen.append(frame)
            if until(seen):
                break
    return seen


def events_of(seen: list[Frame]) -> list[dict[str, Any]]:
    return [f.data for f in seen if f.data is not None]


def reached_terminal(job_id: str) -> Any:
    def check(seen: list[Frame]) -> bool:
        return any(
            e["job_id"] == job_id and e["to_status"] in ("succeeded", "failed", "canceled")
            for e in events_of(seen)
        )

    return check


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, settings={"stream_heartbeat_s": 0.2}) as stack:
        yield stack


async def test_a_jobs_stream_is_its_whole_history_then_live(stack: Stack) -> None:
    job = await stack.create("fal", "fal-ai/flux/krea", {"prompt": "x"})
    seen = await asyncio.wait_for(
        collect(stack.http, {"job_id": job["id"]}, until=reached_terminal(job["id"])), 20
    )
    streamed = events_of(seen)
    # the same objects, in order, nothing missing (the seal fields fill in after the commit)
    assert unsealed(streamed) == unsealed(await stack.events(job["id"]))
    ids = [f.id for f in seen if f.data is not None]
    assert ids == [e["id"] for e in streamed]
    assert ids == sorted(ids)
    control = [f for f in seen if f.data is None]
    assert control and all(f.id is None for f in control)  # control frames carry no id
    assert seen[0].retry == 1000


async def test_resume_after_a_reconnect_has_no_gap_and_no_repeat(stack: Stack) -> None:
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"})
    first = await collect(
        stack.http, {"job_id": job["id"]}, until=lambda seen: len(events_of(seen)) >= 2
    )
    last_id = [f.id for f in first if f.data is not None][-1]
    rest = await asyncio.wait_for(
        collect(
            stack.http,
            {"job_id": job["id"]},
            headers={"Last-Event-ID": str(last_id)},
            until=reached_terminal(job["id"]),
        ),
        20,
    )
    joined = events_of(first) + events_of(rest)
    assert unsealed(joined) == unsealed(await stack.events(job["id"]))
    by_query = await collect(
        stack.http, {"job_id": job["id"], "after": last_id}, until=reached_terminal(job["id"])
    )
    assert unsealed(events_of(by_query)) == unsealed(events_of(rest))


async def test_the_all_jobs_stream_starts_live_and_resumes_across_jobs(stack: Stack) -> None:
    before = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "before"})
    await stack.wait_for(before["id"])
    seen_task = asyncio.create_task(
        collect(
            stack.http,
            {},
            until=lambda seen: (
                sum(e["to_status"] in ("succeeded", "failed") for e in events_of(seen)) >= 3
            ),
        )
    )
    await stack.hub_has_subscriber()
    jobs = [await stack.create(p, m, {"prompt": "x"}) for p, m in
            (("krea", "bfl/flux-1-dev"), ("fal", "fal-ai/flux/krea"), ("scenario", "model_flux-krea-dev"))]  # fmt: skip
    seen = await asyncio.wait_for(seen_task, 20)
    streamed = events_of(seen)
    assert before["id"] not in {e["job_id"] for e in streamed}  # live: no history of earlier jobs
    ids = [e["id"] for e in streamed]
    assert ids == sorted(set(ids))
    for job in jobs:
        history = unsealed(await stack.events(job["id"]))
        mine = unsealed([e for e in streamed if e["job_id"] == job["id"]])
        assert mine == history[: len(mine)]


async def test_heartbeats_keep_an_idle_stream_open(stack: Stack) -> None:
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"})
    await stack.wait_for(job["id"])
    seen = await collect(
        stack.http,
        {"job_id": job["id"]},
        until=lambda seen: sum(f.comment is not None for f in seen) >= 2,
    )
    beats = [f for f in seen if f.comment is not None]
    assert [f.comment for f in beats] == ["keep-alive", "keep-alive"]
    assert all(f.id is None for f in beats)


async def test_bad_stream_requests(stack: Stack) -> None:
    missing = await stack.http.get(
        "/v1/events/stream", params={"job_id": "job_01JAAAAAAAAAAAAAAAAAAAAAAA"}
    )
    assert missing.status_code == 404
    bad = await stack.http.get("/v1/events/stream", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["loc"] == ["header", "Last-Event-ID"]
    assert (await stack.http.get("/v1/events/stream", params={"after": "-1"})).status_code == 422


async def test_streams_survive_the_loss_of_the_listen_connection(
    stack: Stack, database_url: str
) -> None:
    hub = stack.service.app[HUB_KEY]
    await asyncio.wait_for(hub.listen_connected.wait(), 10)
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"})
    stream = asyncio.create_task(
        collect(stack.http, {"job_id": job["id"]}, until=reached_terminal(job["id"]))
    )
    admin = await asyncpg.connect(database_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            LISTENER_NAME,
        )
    finally:
        await admin.close()
    assert killed == 1
    seen = await asyncio.wait_for(stream, 20)
    assert unsealed(events_of(seen)) == unsealed(await stack.events(job["id"]))
    await asyncio.wait_for(hub.listen_connected.wait(), 10)
    assert hub.reconnects >= 1


async def test_a_stream_is_correct_while_two_instances_do_the_work(
    stack: Stack, database_url: str
) -> None:
    """Instance B (its own pool, hub and runner) serves the stream; instance A takes and runs
    the jobs too. B's stream must carry every event, whoever committed it."""
    db_b = await Database.open(database_url, min_size=1, max_size=5)
    b = await start_service(stack_settings(stack.sims), db_b, run_workers=True)
    # Providers call back through A (both instances share the database); B's runner, woken by
    # the same NOTIFY as A's, submits some of the jobs.
    b.app[RUNNER_KEY].callback_base_url = stack.service.url
    try:
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as client_b:
            jobs = [
                await stack.create("fal", "fal-ai/flux/krea", {"prompt": f"x{i}"}) for i in range(4)
            ]

            def all_done(seen: list[Frame]) -> bool:
                return all(reached_terminal(j["id"])(seen) for j in jobs)

            seen = await asyncio.wait_for(collect(client_b, {"after": 0}, until=all_done), 20)
        streamed = events_of(seen)
        for job in jobs:
            mine = [e for e in streamed if e["job_id"] == job["id"]]
            assert unsealed(mine) == unsealed(await stack.events(job["id"]))
        ids = [e["id"] for e in streamed]
        assert ids == sorted(set(ids))
    finally:
        await b.server.close()


async def test_an_open_stream_ends_when_the_server_shuts_down(database_url: str) -> None:
    """The server waits for open requests when it stops: a stream (the operator page keeps one
    open) must end at once rather than hold the shutdown until its timeout (60 s)."""
    async with (
        running_stack(database_url) as stack,
        stack.http.stream("GET", "/v1/events/stream") as response,
    ):
        assert response.status_code == 200
        await stack.hub_has_subscriber()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(stack.service.server.close(), 10)
        assert [line async for line in response.aiter_lines()] == ["retry: 1000", ""]
        assert asyncio.get_running_loop().time() - started < 5
