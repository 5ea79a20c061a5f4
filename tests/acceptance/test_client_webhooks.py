"""Client webhooks per CONTRACT.md and Standard Webhooks: signed, one webhook-id across
retries, the retry schedule with Retry-After, 410 stops the job's deliveries, private targets
refused unless allowed, a slow endpoint does not hold up the others, every attempt recorded."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from tests.acceptance.stack import Stack, running_stack

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-length").decode()
QUICK_SCHEDULE = (0.05, 0.05, 0.05)


@dataclass
class Receiver:
    """A client's webhook endpoint: answers `answer(n)` to the n-th try of a message."""

    answer: Callable[[int], Awaitable[web.Response]]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hooks"))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        # n: how many times this message (webhook-id) came before
        n = sum(h["webhook-id"] == request.headers["webhook-id"] for h, _ in self.received)
        self.received.append((dict(request.headers), body))
        async with self.arrived:
            self.arrived.notify_all()
        return await self.answer(n)

    async def wait_for(self, count: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= count), 20)


async def ok(_n: int) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[TestServer] = []

    async def make(answer: Callable[[int], Awaitable[web.Response]] = ok) -> Receiver:
        receiver = Receiver(answer)
        app = web.Application()
        app.router.add_post("/hooks", receiver.handle)
        receiver.server = TestServer(app, host="127.0.0.1", port=0)
        await receiver.server.start_server()
        started.append(receiver.server)
        return receiver

    yield make
    for server in started:
        await server.close()


def stack_for_webhooks(database_url: str, **settings: Any) -> Any:
    return running_stack(
        database_url,
        settings={
            "client_webhook_secret": SECRET,
            "client_webhook_retry_schedule": QUICK_SCHEDULE,
            "client_webhook_allow_private": True,
            **settings,
        },
    )


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stack_for_webhooks(database_url) as stack:
        yield stack


async def eventually(check: Callable[[], Awaitable[Any]], *, within_s: float = 10.0) -> Any:
    """The first truthy result of `check`. Attempt records emit no event to await, so the API is
    read again until the record is there, bounded by `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def delivery_of(
    stack: Stack, job_id: str, event_type: str, *, when: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        for delivery in await deliveries(stack, job_id):
            if delivery["type"] == event_type and when(delivery):
                return delivery
        return None

    result: dict[str, Any] = await eventually(check)
    return result


async def deliveries(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()["deliveries"]
    return result


async def test_every_status_change_is_delivered_signed(stack: Stack, receivers: Any) -> None:
    receiver = await receivers()
    job = await stack.create("fal", "fal-ai/flux/krea", {"prompt": "x"}, webhook_url=receiver.url)
    done = await stack.wait_for(job["id"])
    changes = [e for e in await stack.events(job["id"]) if e["type"] == "status_changed"]
    await receiver.wait_for(len(changes))
    verifier = Webhook(SECRET)
    bodies = []
    for headers, body in receiver.received:
        payload = verifier.verify(body, headers)  # raises unless the signature is right
        bodies.append(payload)
        assert headers["webhook-id"].startswith("msg_")
    assert sorted(b["type"] for b in bodies) == sorted(f"job.{e['to_status']}" for e in changes)
    final = next(b for b in bodies if b["type"] == "job.succeeded")
    assert final["data"] == done  # the job as it was at that change
    assert final["timestamp"].endswith("Z")
    assert {d["state"] for d in await deliveries(stack, job["id"])} == {"delivered"}
    tampered = receiver.received[0]
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered[1].replace(b"job.", b"jab."), tampered[0])


async def test_500_twice_then_200_is_three_attempts_with_one_webhook_id(
    stack: Stack, receivers: Any
) -> None:
    async def flaky(n: int) -> web.Response:
        return web.Response(status=500) if n < 2 else web.json_response({"ok": True})

    receiver = await receivers(flaky)
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)
    accepted = await delivery_of(
        stack, job["id"], "job.accepted", when=lambda d: d["state"] == "delivered"
    )
    tries = [(h, b) for h, b in receiver.received if h["webhook-id"] == accepted["webhook_id"]]
    assert len(tries) == 3
    assert len({b for _, b in tries}) == 1  # the same body every time
    assert [a["status_code"] for a in accepted["attempts"]] == [500, 500, 200]
    assert accepted["attempts"][0]["error"] == "http 500"
    assert all(a["duration_ms"] >= 0 for a in accepted["attempts"])


async def test_retry_after_is_honoured(stack: Stack, receivers: Any) -> None:
    async def busy(n: int) -> web.Response:
        return (
            web.Response(status=429, headers={"Retry-After": "120"})
            if n == 0
            else web.json_response({})
        )

    receiver = await receivers(busy)
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)
    await receiver.wait_for(1)
    for _ in range(200):
        accepted = next(
            d for d in await deliveries(stack, job["id"]) if d["type"] == "job.accepted"
        )
        if accepted["attempts"]:
            break
        await asyncio.sleep(0.02)
    attempt = accepted["attempts"][0]
    assert attempt["status_code"] == 429
    started = datetime.fromisoformat(attempt["started_at"].replace("Z", "+00:00"))
    next_at = datetime.fromisoformat(accepted["next_attempt_at"].replace("Z", "+00:00"))
    assert (next_at - started).total_seconds() >= 119  # not the 0.05 s of the schedule


async def test_410_stops_delivery_for_the_job(stack: Stack, receivers: Any) -> None:
    async def gone(_n: int) -> web.Response:
        return web.Response(status=410)

    receiver = await receivers(gone)
    job = await stack.create(
        "scenario", "model_flux-krea-dev", {"prompt": "x"}, webhook_url=receiver.url
    )
    await stack.wait_for(job["id"])
    await receiver.wait_for(1)

    async def settled() -> list[str] | None:
        states = [d["state"] for d in await deliveries(stack, job["id"])]
        return states if "pending" not in states else None

    states = await eventually(settled)
    assert states[0] == "stopped"
    assert set(states) == {"stopped"}
    assert len(receiver.received) == 1  # nothing more was sent for this job


async def test_schedule_exhausted_marks_the_delivery_failed(stack: Stack, receivers: Any) -> None:
    async def down(_n: int) -> web.Response:
        return web.Response(status=503)

    receiver = await receivers(down)
    job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url)
    await receiver.wait_for(len(QUICK_SCHEDULE) + 1)
    for _ in range(200):
        accepted = next(
            d for d in await deliveries(stack, job["id"]) if d["type"] == "job.accepted"
        )
        if accepted["state"] == "failed":
            break
        await asyncio.sleep(0.02)
    assert accepted["state"] == "failed"
    assert len(accepted["attempts"]) == len(QUICK_SCHEDULE) + 1


async def test_a_slow_endpoint_does_not_hold_up_others(stack: Stack, receivers: Any) -> None:
    release = asyncio.Event()

    async def stuck(_n: int) -> web.Response:
        await release.wait()
        return web.json_response({})

    slow = await receivers(stuck)
    fast = await receivers()
    try:
        for i in range(8):  # more than the per-endpoint limit, all stuck
            await stack.create(
                "krea", "bfl/flux-1-dev", {"prompt": f"slow {i}"}, webhook_url=slow.url
            )
        await slow.wait_for(4)
        job = await stack.create("krea", "bfl/flux-1-dev", {"prompt": "fast"}, webhook_url=fast.url)
        await fast.wait_for(1)
        assert (
            Webhook(SECRET).verify(fast.received[0][1], fast.received[0][0])["data"]["id"]
            == job["id"]
        )
        assert len(slow.received) == 4  # the per-endpoint limit held the others back
    finally:
        release.set()  # never leave handlers stuck: the servers could not shut down


async def test_private_targets_are_refused_unless_allowed(
    database_url: str, receivers: Any
) -> None:
    receiver = await receivers()
    async with stack_for_webhooks(database_url, client_webhook_allow_private=False) as stack:
        job = await stack.create(
            "krea", "bfl/flux-1-dev", {"prompt": "x"}, webhook_url=receiver.url
        )
        found = await delivery_of(
            stack, job["id"], "job.accepted", when=lambda d: d["state"] == "failed"
        )
        assert "not a public address" in found["attempts"][0]["error"]
        assert len(found["attempts"]) == 1
        assert receiver.received == []


async def test_webhooks_need_a_secret(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        response = await stack.http.post(
            "/v1/jobs",
            json={
                "provider": "krea",
                "model": "bfl/flux-1-dev",
                "input": {"prompt": "x"},
                "webhook_url": "https://client.example/hooks",
            },
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "client_webhooks_disabled"
