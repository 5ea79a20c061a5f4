"""The metrics an operator alerts on (README, Metrics and alerts), read from GET /metrics of a
running service after real requests, callbacks, jobs and webhook deliveries.

The registry is the process's, shared by every test of the session: counters and histograms
are compared before and after (deltas); the gauges read from the database at the scrape are
exact, each test having a fresh database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from service.events.hub import LISTENER_NAME
from service.web.app import HUB_KEY
from simulators import SimulatorConfig
from tests.acceptance.stack import Stack, running_stack
from tests.acceptance.test_client_webhooks import (  # noqa: F401 (the fixture)
    SECRET,
    Receiver,
    deliveries,
    eventually,
    receivers,
)

SLOW = SimulatorConfig(queue_seconds=60, run_seconds=60)
CALLBACK_ROUTE = "/callbacks/{provider}/{job_id}/{token}"
LIVE = ("accepted", "submitted", "queued", "running")

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One reading of /metrics: every sample by (name, sorted labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a counter or histogram child not made yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples

    def label_sets(self, name: str) -> set[Labels]:
        return {labels for (n, labels) in self.samples if n == name}


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def requests(s: Scrape, method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return s.get("http_request_duration_seconds_count", **labels)


# --- HTTP requests ---------------------------------------------------------------------------


async def test_requests_are_timed_by_method_route_pattern_and_status(
    http: httpx.AsyncClient,
) -> None:
    before = await scrape(http)
    created = await http.post(
        "/v1/jobs", json={"provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": "x"}}
    )
    assert created.status_code == 202
    job_id = created.json()["id"]
    for _ in range(3):
        assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 200
    missing = await http.get("/v1/jobs/job_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert missing.status_code == 404
    invalid = await http.post("/v1/jobs", json={"provider": "krea"})
    assert invalid.status_code == 422
    assert (await http.delete("/healthz")).status_code == 405
    after = await scrape(http)

    def delta(method: str, route: str, status: int) -> float:
        return requests(after, method, route, status) - requests(before, method, route, status)

    assert delta("POST", "/v1/jobs", 202) == 1
    assert delta("GET", "/v1/jobs/{job_id}", 200) == 3
    assert delta("GET", "/v1/jobs/{job_id}", 404) == 1  # the handler's 404: its route is known
    assert delta("POST", "/v1/jobs", 422) == 1  # an error is timed like any answer
    assert delta("DELETE", "unmatched", 405) == 1
    assert delta("GET", "/metrics", 200) == 1  # the first scrape (the second is being answered)
    # A histogram: the +Inf bucket holds every request, the sum is a positive duration.
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "200"}
    assert after.get("http_request_duration_seconds_bucket", **labels, le="+Inf") == (
        after.get("http_request_duration_seconds_count", **labels)
    )
    assert after.get("http_request_duration_seconds_sum", **labels) > 0
    assert job_id not in after.text  # never the raw path


async def test_paths_no_route_matches_make_no_new_label_values(http: httpx.AsyncClient) -> None:
    assert (await http.get("/no/such/thing")).status_code == 404  # the `unmatched` child exists
    await scrape(http)  # and /metrics' own: a scrape is counted once it is answered
    before = await scrape(http)
    junk = [f"/no/{secrets.token_hex(8)}" for _ in range(25)]
    for path in junk:
        assert (await http.get(path)).status_code == 404
    # A method outside the usual ones (the HTTP parser refuses unknown ones before any handler).
    assert (await http.request("PROPFIND", "/healthz")).status_code == 405
    after = await scrape(http)
    new = after.label_sets("http_request_duration_seconds_count") - before.label_sets(
        "http_request_duration_seconds_count"
    )
    # Nothing but the `other` method may be new: PROPFIND is not a label value of its own.
    assert {dict(labels)["route"] for labels in new} <= {"unmatched"}
    assert {dict(labels)["method"] for labels in new} <= {"other"}
    assert (
        requests(after, "GET", "unmatched", 404) - requests(before, "GET", "unmatched", 404) == 25
    )
    assert not any(path.rsplit("/", 1)[1] in after.text for path in junk)


# --- callbacks -------------------------------------------------------------------------------


@pytest.fixture
async def slow_stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sim_config=SLOW) as stack:
        yield stack


async def submitted(stack: Stack, provider: str, model: str) -> tuple[dict[str, Any], Any]:
    job = await stack.create(provider, model, {"prompt": "a harbour"})
    await stack.wait_for(job["id"], {"submitted"})
    sim_job = next(
        j
        for j in stack.sims.simulator(provider).jobs.values()
        if job["id"] in (j.callback_url or "")
    )
    return job, sim_job


async def test_rejected_callbacks_are_counted_by_reason(slow_stack: Stack) -> None:
    stack = slow_stack
    _krea_job, krea = await submitted(stack, "krea", "bfl/flux-1-dev")
    _fal_job, fal = await submitted(stack, "fal", "fal-ai/flux/krea")
    before = await scrape(stack.http)
    completed = orjson.dumps({
        "job_id": krea.id, "status": "completed", "created_at": "2026-11-21T10:00:00.000Z",
        "completed_at": "2026-11-21T10:00:05.000Z", "result": {"urls": ["https://cdn.example/a.png"]},
    })  # fmt: skip
    prefix, token = krea.callback_url.rsplit("/", 1)
    answers = [
        await stack.http.post(f"{prefix}/{'A' * len(token)}", content=completed),  # 401
        await stack.http.post(f"{prefix}/{token[:-1]}x", content=completed),  # 401
        await stack.http.post(krea.callback_url, content=b"not json"),  # 400
        await stack.http.post(krea.callback_url, content=b"x" * (5 * 1024 * 1024 + 1)),  # 413
    ]
    stack.sims.fal.update_config({"callback_bad_signature": True})
    answers.append(await stack.http.post(fal.callback_url, content=b"{}"))
    body, headers = stack.sims.fal.render_callback(fal)
    answers.append(await stack.http.post(fal.callback_url, content=body, headers=headers))  # 401
    assert [a.status_code for a in answers] == [401, 401, 400, 413, 401, 401]
    ok = await stack.http.post(krea.callback_url, content=completed)
    assert ok.status_code == 200 and ok.json() == {"status": "applied"}
    after = await scrape(stack.http)

    def rejected(provider: str, reason: str) -> float:
        name = "provider_callbacks_rejected_total"
        return after.get(name, provider=provider, reason=reason) - before.get(
            name, provider=provider, reason=reason
        )

    def outcome(provider: str, outcome: str) -> float:
        name = "provider_callbacks_total"
        return after.get(name, provider=provider, outcome=outcome) - before.get(
            name, provider=provider, outcome=outcome
        )

    assert rejected("krea", "invalid_callback_token") == 2
    assert rejected("krea", "malformed") == 1
    assert rejected("krea", "payload_too_large") == 1
    assert rejected("fal", "invalid_signature") == 2
    assert outcome("krea", "rejected") == 4 and outcome("fal", "rejected") == 2
    assert outcome("krea", "applied") == 1
    reasons = {
        dict(labels)["reason"] for labels in after.label_sets("provider_callbacks_rejected_total")
    }
    assert reasons <= {"invalid_callback_token", "invalid_signature", "invalid_callback",
                       "malformed", "payload_too_large", "other"}  # fmt: skip
    # The callback route is timed under its pattern, and no token appears in /metrics.
    for status, count in ((401, 4), (400, 1), (413, 1), (200, 1)):
        assert (
            requests(after, "POST", CALLBACK_ROUTE, status)
            - requests(before, "POST", CALLBACK_ROUTE, status)
            == count
        ), status
    assert token not in after.text


# --- jobs by status --------------------------------------------------------------------------


async def test_jobs_gauge_counts_non_terminal_jobs_by_status_and_provider(
    http: httpx.AsyncClient,
) -> None:
    # No runner in this service: jobs stay `accepted` until canceled.
    async def create(provider: str, model: str) -> str:
        response = await http.post(
            "/v1/jobs", json={"provider": provider, "model": model, "input": {"prompt": "x"}}
        )
        assert response.status_code == 202
        job_id: str = response.json()["id"]
        return job_id

    krea = [await create("krea", "bfl/flux-1-dev") for _ in range(3)]
    await create("fal", "fal-ai/flux/krea")
    first = await scrape(http)
    assert first.get("jobs", status="accepted", provider="krea") == 3
    assert first.get("jobs", status="accepted", provider="fal") == 1
    assert first.get("jobs", status="accepted", provider="scenario") == 0  # absent, or 0
    assert not any(dict(labels)["status"] not in LIVE for labels in first.label_sets("jobs"))
    assert 0 < first.get("jobs_oldest_age_seconds", status="accepted", provider="krea") < 60

    for job_id in krea:  # never sent: canceled at once, terminal, so no longer counted
        assert (await http.post(f"/v1/jobs/{job_id}/cancel")).json()["status"] == "canceled"
    second = await scrape(http)
    assert second.get("jobs", status="accepted", provider="fal") == 1
    # The series stays, at 0, rather than keeping its last count or vanishing.
    assert second.has("jobs", status="accepted", provider="krea")
    assert second.get("jobs", status="accepted", provider="krea") == 0
    assert second.get("jobs_oldest_age_seconds", status="accepted", provider="krea") == 0
    assert not second.has("jobs", status="canceled", provider="krea")


# --- client webhooks -------------------------------------------------------------------------


def attempts(after: Scrape, before: Scrape, outcome: str) -> float:
    name = "client_webhook_attempts_total"
    return after.get(name, outcome=outcome) - before.get(name, outcome=outcome)


@pytest.fixture
async def webhook_stack(database_url: str) -> AsyncIterator[Stack]:
    settings = {
        "client_webhook_secret": SECRET,
        "client_webhook_retry_schedule": (0.05, 0.05),
        "client_webhook_allow_private": True,
    }
    async with running_stack(database_url, settings=settings) as stack:
        yield stack


async def settled(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        found = await deliveries(stack, job_id)
        return found if found and all(d["state"] != "pending" for d in found) else None

    result: list[dict[str, Any]] = await eventually(check, within_s=20)
    return result


async def test_webhook_attempts_are_counted_by_outcome(
    webhook_stack: Stack,
    receivers: Any,  # noqa: F811
) -> None:
    stack = webhook_stack

    async def flaky(n: int) -> web.Response:  # every message: 500, then 200
        return web.Response(status=500) if n == 0 else web.json_response({})

    async def down(_n: int) -> web.Response:
        return web.Response(status=503)

    async def gone(_n: int) -> web.Response:
        return web.Response(status=410)

    before = await scrape(stack.http)
    flaky_receiver: Receiver = await receivers(flaky)
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"},
                             webhook_url=flaky_receiver.url)  # fmt: skip
    await stack.wait_for(job["id"])
    messages = len(await settled(stack, job["id"]))
    middle = await scrape(stack.http)
    assert attempts(middle, before, "delivered") == messages
    assert attempts(middle, before, "failed_retrying") == messages

    down_receiver: Receiver = await receivers(down)
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"},
                             webhook_url=down_receiver.url)  # fmt: skip
    await stack.wait_for(job["id"])
    failed = await settled(stack, job["id"])
    assert {d["state"] for d in failed} == {"failed"}
    gone_receiver: Receiver = await receivers(gone)
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"},
                             webhook_url=gone_receiver.url)  # fmt: skip
    await stack.wait_for(job["id"])
    await settled(stack, job["id"])
    after = await scrape(stack.http)
    assert attempts(after, middle, "failed_final") == len(failed)
    assert attempts(after, middle, "failed_retrying") == 2 * len(failed)  # the schedule's two
    assert attempts(after, middle, "stopped_410") == len(gone_receiver.received) >= 1
    assert attempts(after, middle, "delivered") == 0
    assert after.get("client_webhook_backlog") == 0
    assert after.get("client_webhook_overdue_seconds") == 0


async def test_webhook_backlog_is_the_pending_deliveries(
    webhook_stack: Stack,
    receivers: Any,  # noqa: F811
) -> None:
    stack = webhook_stack

    async def busy(_n: int) -> web.Response:  # come back in two minutes
        return web.Response(status=429, headers={"Retry-After": "120"})

    receiver: Receiver = await receivers(busy)
    job = await stack.create("scenario", "model_flux-krea-dev", {"prompt": "x"},
                             webhook_url=receiver.url)  # fmt: skip
    await stack.wait_for(job["id"])

    async def all_tried() -> list[dict[str, Any]] | None:
        found = await deliveries(stack, job["id"])
        return found if found and all(d["attempts"] for d in found) else None

    pending = await eventually(all_tried, within_s=20)
    assert {d["state"] for d in pending} == {"pending"}
    s = await scrape(stack.http)
    assert s.get("client_webhook_backlog") == len(pending)
    assert s.get("client_webhook_overdue_seconds") == 0  # none is due before two minutes


# --- LISTEN ----------------------------------------------------------------------------------


async def test_listen_reconnects_are_counted(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        hub = stack.service.app[HUB_KEY]
        await asyncio.wait_for(hub.listen_connected.wait(), 10)
        before = await scrape(stack.http)
        lost = hub.reconnects
        admin = await asyncpg.connect(database_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                LISTENER_NAME,
            )
        finally:
            await admin.close()
        assert killed == 1

        async def reconnected() -> bool:
            return hub.reconnects > lost and hub.listen_connected.is_set()

        await eventually(reconnected, within_s=20)
        after = await scrape(stack.http)
        assert after.get("listen_reconnects_total") - before.get("listen_reconnects_total") == 1
