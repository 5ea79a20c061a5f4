"""Tracing across instances (CONTRACT.md, Operations): a job is one trace, whichever instance
does which part of it. Two real `python -m service serve` processes on one database export to
an OTLP/HTTP receiver of the test's own (tests/acceptance/otlp_receiver.py): instance A takes
`POST /v1/jobs` (with the client's `traceparent`) and the providers' callbacks but runs no
workers; instance B submits, polls and delivers the client webhooks. The spans are waited for
as they arrive, never on a clock. Every span received is also written to `spans.log`, which
tests/security reads with the logs when it reruns this suite."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web

from simulators import RunningSimulators, SimulatorConfig, start_simulators
from tests.acceptance.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.acceptance.stack import TERMINAL, JobWatcher
from tests.chaos.harness import Process, free_port, python, serve_on_free_port

API_TOKEN = "tracing-api-token-" + "7" * 24
WEBHOOK_SECRET = "whsec_" + "dHJhY2luZy13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"
#: The route of provider callbacks, as the aiohttp server instrumentation names its spans.
CALLBACK_ROUTE = "POST /callbacks/{provider}/{job_id}/{token}"
WITHIN_S = 60.0  # a bound on a hung test, never a measure


class Hooks:
    """The clients' webhook endpoint: every request's headers and body, and a waker."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        self._runner, base_url = await serve_on_free_port(app)
        self.url = f"{base_url}/hooks"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        async with self.changed:
            self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
            self.changed.notify_all()
        return web.json_response({"ok": True})

    async def wait_for(self, webhook_ids: set[str]) -> dict[str, dict[str, str]]:
        """The headers of each of these deliveries, once all have come."""

        async def arrived() -> dict[str, dict[str, str]]:
            async with self.changed:
                while True:
                    got = {h["webhook-id"]: h for h, _ in self.received}
                    if webhook_ids <= got.keys():
                        return {i: got[i] for i in webhook_ids}
                    await self.changed.wait()

        return await asyncio.wait_for(arrived(), WITHIN_S)


@dataclass
class Stack:
    database_url: str
    tmp_path: Path
    sims: RunningSimulators
    collector: OtlpReceiver
    hooks: Hooks
    watcher: JobWatcher
    processes: list[Process] = field(default_factory=list)

    def env(self, name: str, port: int, *, public_url: str, **extra: str) -> dict[str, str]:
        sims = self.sims
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env.update({
            "DATABASE_URL": self.database_url, "HOST": "127.0.0.1", "PORT": str(port),
            "PUBLIC_BASE_URL": public_url, "SERVICE_DATA_DIR": str(self.tmp_path / name),
            "API_TOKENS": API_TOKEN, "OUTPUT_STORE_URL": "none",
            "CLIENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "CLIENT_WEBHOOK_ALLOW_PRIVATE": "true",
            "KREA_API_URL": sims.krea_url, "KREA_API_TOKEN": sims.krea_token,
            "FAL_QUEUE_URL": sims.fal_url, "FAL_KEY": sims.fal_key,
            "FAL_JWKS_URL": sims.fal_jwks_url, "SCENARIO_API_URL": sims.scenario_url,
            "SCENARIO_SDK_API_KEY": sims.scenario_api_key,
            "SCENARIO_SDK_API_SECRET": sims.scenario_api_secret,
            # At debug when tests/security reruns this suite: it reads these logs too.
            "LOG_FORMAT": "json", "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "warning"),
            # OpenTelemetry's own variables: the receiver, each instance's name, quick batches.
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector.url, "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **extra,
        })  # fmt: skip
        return env

    async def serve(self, name: str, port: int, *, public_url: str, **extra: str) -> str:
        url = f"http://127.0.0.1:{port}"
        process = Process(
            name, [python(), "-m", "service", "serve"],
            env=self.env(name, port, public_url=public_url, **extra),
            log_dir=self.tmp_path, health_url=f"{url}/readyz",
        )  # fmt: skip
        self.processes.append(process)
        process.start()
        await process.ready()
        return url

    async def terminal(self, http: httpx.AsyncClient, job_ids: list[str]) -> None:
        async def reached() -> None:
            async with self.watcher.changed:
                while True:
                    jobs = [(await http.get(f"/v1/jobs/{i}")).json() for i in job_ids]
                    if all(job["status"] in TERMINAL for job in jobs):
                        return
                    await self.watcher.changed.wait()

        await asyncio.wait_for(reached(), WITHIN_S)

    async def archived(self, http: httpx.AsyncClient, job_ids: list[str]) -> dict[str, set[str]]:
        """The `webhook-id` of each job's deliveries, once its outputs are archived (its
        `job.outputs_archived` delivery is among them)."""

        async def reached() -> dict[str, set[str]]:
            async with self.watcher.changed:
                while True:
                    found = {
                        job_id: (await http.get(f"/v1/jobs/{job_id}/webhooks")).json()["deliveries"]
                        for job_id in job_ids
                    }
                    if all(
                        any(d["type"] == "job.outputs_archived" for d in deliveries)
                        for deliveries in found.values()
                    ):
                        return {
                            job_id: {d["webhook_id"] for d in deliveries}
                            for job_id, deliveries in found.items()
                        }
                    await self.watcher.changed.wait()

        return await asyncio.wait_for(reached(), WITHIN_S)


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    sims = await start_simulators(config=SimulatorConfig(queue_seconds=0.05, run_seconds=0.1))
    collector, hooks = OtlpReceiver(), Hooks()
    await collector.start()
    await hooks.start()
    listen = await asyncpg.connect(database_url)
    watcher = JobWatcher(listen)
    await watcher.start()
    running = Stack(database_url, tmp_path, sims, collector, hooks, watcher)
    try:
        yield running
    finally:
        for process in running.processes:
            process.stop()
        (tmp_path / "spans.log").write_bytes(
            b"".join(orjson.dumps(s.as_json()) + b"\n" for s in collector.spans)
        )
        await listen.close()
        await hooks.close()
        await collector.close()
        await sims.close()


def new_traceparent() -> tuple[str, str, str]:
    """A client's traceparent, with its trace id and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@dataclass(frozen=True)
class Trace:
    spans: list[ReceivedSpan]

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        [span] = self.named(name)
        return span

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_id == parent.span_id]

    def http_requests(self, parent: ReceivedSpan, method: str) -> list[ReceivedSpan]:
        """The HTTP client spans under `parent` (the database's are client spans too)."""
        return [
            s
            for s in self.children(parent)
            if s.kind == "CLIENT" and s.name == method and "db.system" not in s.attributes
        ]


def complete_trace(
    trace_id: str, client_span: str, names: set[str], webhook_ids: set[str]
) -> Callable[[list[ReceivedSpan]], Trace | None]:
    """The trace once its root, a span of each name, an attempt span of each webhook (with its
    HTTP client span) and every span's parent have arrived (a child ends, and is exported,
    before its parent; the root's parent is the client's span)."""

    def found(spans: list[ReceivedSpan]) -> Trace | None:
        mine = [s for s in spans if s.trace_id == trace_id]
        ids = {s.span_id for s in mine} | {client_span}
        attempts = [s for s in mine if s.name == "client_webhook.attempt"]
        have = {s.name for s in mine}
        sent = {s.attributes.get("webhook.id") for s in attempts}
        with_client = all(
            any(c.parent_id == a.span_id and c.name == "POST" for c in mine) for a in attempts
        )
        closed = all(s.parent_id in ids for s in mine)
        if names <= have and webhook_ids <= sent and with_client and closed:
            return Trace(mine)
        return None

    return found


def span_with_id(span_id: str) -> Callable[[list[ReceivedSpan]], ReceivedSpan | None]:
    return lambda spans: next((s for s in spans if s.span_id == span_id), None)


async def test_a_job_is_one_trace_across_two_instances(stack: Stack) -> None:
    port_a, port_b = free_port(), free_port()
    url_a = f"http://127.0.0.1:{port_a}"
    # A serves the API and the callbacks (B's callback URLs point at it), B runs the workers,
    # the archiver among them.
    await stack.serve("imagejobs-a", port_a, public_url=url_a, RUN_WORKERS="false")
    await stack.serve(
        "imagejobs-b", port_b, public_url=url_a, RUN_WORKERS="true",
        OUTPUT_STORE_URL=(stack.tmp_path / "outputs").as_uri(), OUTPUT_FETCH_ALLOW_PRIVATE="true",
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    jobs: dict[str, tuple[str, str, str]] = {}  # provider -> job id, trace id, client span
    async with httpx.AsyncClient(base_url=url_a, timeout=10, headers=auth) as http:
        for provider, model in (("fal", "fal-ai/flux/krea"), ("scenario", "model_flux-krea-dev")):
            traceparent, trace_id, client_span = new_traceparent()
            created = await http.post(
                "/v1/jobs", headers={"traceparent": traceparent},
                json={"provider": provider, "model": model, "input": {"prompt": "traced"},
                      "webhook_url": stack.hooks.url},
            )  # fmt: skip
            assert created.status_code == 202, created.text
            jobs[provider] = (created.json()["id"], trace_id, client_span)
        await stack.terminal(http, [job_id for job_id, _, _ in jobs.values()])
        by_job = await stack.archived(http, [job_id for job_id, _, _ in jobs.values()])
        deliveries = {provider: by_job[job_id] for provider, (job_id, _, _) in jobs.items()}
        for job_id, _, _ in jobs.values():
            assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"
    hooks = await stack.hooks.wait_for(deliveries["fal"] | deliveries["scenario"])

    later = {"fal": "job.callback", "scenario": "job.poll"}  # how each learns of its end
    for provider, (job_id, trace_id, client_span) in jobs.items():
        expected = {"POST /v1/jobs", "job.submit", later[provider], "output.archive"}
        trace = await stack.collector.wait_for(
            complete_trace(trace_id, client_span, expected, deliveries[provider]), WITHIN_S
        )
        # A job is one trace: every span naming the job, from either instance, is in it.
        named_job = [s for s in stack.collector.spans if s.attributes.get("job.id") == job_id]
        assert {s.trace_id for s in named_job} == {trace_id}
        assert {s.service for s in named_job} == {"imagejobs-a", "imagejobs-b"}

        # The request on A continues the client's trace: its span is the root of the job's.
        root = trace.one("POST /v1/jobs")
        assert (root.service, root.kind, root.parent_id) == ("imagejobs-a", "SERVER", client_span)
        assert root.attributes["job.id"] == job_id and root.attributes["job.provider"] == provider

        # The later work, on B (and the callback on A), is parented to the stored context.
        submit = trace.one("job.submit")
        assert (submit.service, submit.parent_id) == ("imagejobs-b", root.span_id)
        assert (
            submit.attributes["job.id"] == job_id and submit.attributes["job.status"] == "accepted"
        )
        [submit_request] = trace.http_requests(submit, "POST")
        assert submit_request.service == "imagejobs-b"

        for attempt in trace.named("client_webhook.attempt"):
            assert (attempt.service, attempt.parent_id) == ("imagejobs-b", root.span_id)
            assert attempt.attributes["webhook.outcome"] == "delivered"
            [request] = trace.http_requests(attempt, "POST")
            assert request.attributes["http.response.status_code"] == 200
            # The client got the context of exactly that HTTP client span.
            sent = hooks[attempt.attributes["webhook.id"]]["traceparent"]
            assert sent.split("-")[1:3] == [trace_id, request.span_id]
        assert {a.attributes["webhook.id"] for a in trace.named("client_webhook.attempt")} == (
            deliveries[provider]
        )

        # Each output was archived on B in one attempt, its span parented to the stored context
        # (the host it came from, never the URL's query).
        [archive] = trace.named("output.archive")
        assert (archive.service, archive.parent_id) == ("imagejobs-b", root.span_id)
        assert archive.attributes["archive.outcome"] == "archived"
        assert (archive.attributes["output.index"], archive.attributes["output.attempt"]) == (0, 1)
        assert archive.attributes["output.bytes"] > 0 and not archive.error
        assert archive.attributes["server.address"] == "127.0.0.1"

        if provider == "fal":
            # The callback came to A in a request of its own (providers send no traceparent):
            # its span joins the job's trace and links that request's.
            callback = trace.one("job.callback")
            assert (callback.service, callback.parent_id) == ("imagejobs-a", root.span_id)
            assert callback.attributes["callback.outcome"] == "applied"
            assert callback.attributes["job.observed_status"] == "succeeded"
            [(link_trace, link_span)] = callback.links
            # (That request's span ends after the callback's: it may come in a later export.)
            request_span = await stack.collector.wait_for(span_with_id(link_span), WITHIN_S)
            assert (request_span.name, request_span.kind) == (CALLBACK_ROUTE, "SERVER")
            assert request_span.trace_id == link_trace != trace_id
        else:
            polls = trace.named("job.poll")
            assert all(p.service == "imagejobs-b" and p.parent_id == root.span_id for p in polls)
            assert "succeeded" in {p.attributes.get("job.observed_status") for p in polls}
            assert all(trace.http_requests(poll, "GET") for poll in polls)
        # Database statements are in the trace, under the work that made them.
        by_id = {s.span_id: s for s in trace.spans}
        statements = [s for s in trace.spans if "db.system" in s.attributes]
        assert statements
        assert {by_id[s.parent_id].name for s in statements} <= {
            "job.submit", "job.poll", "job.callback", "client_webhook.attempt", "output.archive",
        }  # fmt: skip

    # A statement outside any job's or request's span makes no trace of its own.
    roots = [s for s in stack.collector.spans if not s.parent_id]
    assert roots and not [s for s in roots if "db.system" in s.attributes]
    assert_no_secret_exported(stack)


def assert_no_secret_exported(stack: Stack) -> None:
    """No secret in any span exported, as sent over the wire: the callback tokens the
    providers were given (in fal's `fal_webhook` query and in the callbacks' paths), the
    API token, the webhook secret and the providers' credentials."""
    sims = stack.sims
    callback_urls = [job.callback_url for job in sims.fal.jobs.values() if job.callback_url]
    tokens = [url.rsplit("/", 1)[-1] for url in callback_urls]
    assert tokens and all(len(token) >= 32 for token in tokens)
    secrets_sent = [
        *tokens, API_TOKEN, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"),
        sims.krea_token, sims.fal_key, sims.scenario_api_key, sims.scenario_api_secret,
    ]  # fmt: skip
    exported = b"".join(stack.collector.bodies)
    for secret in secrets_sent:
        assert secret.encode() not in exported, f"a secret was exported: {secret[:6]}..."
    # ... though the URLs that carried them were traced, redacted.
    texts = [str(v) for s in stack.collector.spans for v in s.attributes.values()]
    assert any("fal_webhook=[redacted]" in text for text in texts)
    assert any("/callbacks/fal/" in text and "[redacted]" in text for text in texts)


async def test_with_the_sdk_disabled_nothing_is_exported(stack: Stack) -> None:
    """OTEL_SDK_DISABLED=true beside an endpoint: a job runs end to end, its client's
    traceparent is not kept, and by the time the instance has exited (where it would flush its
    spans) the receiver has been sent nothing."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    await stack.serve("imagejobs-off", port, public_url=url, OTEL_SDK_DISABLED="true")
    traceparent, _, _ = new_traceparent()
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=auth) as http:
        created = await http.post(
            "/v1/jobs", headers={"traceparent": traceparent},
            json={"provider": "scenario", "model": "model_flux-krea-dev", "input": {"prompt": "x"}},
        )  # fmt: skip
        assert created.status_code == 202, created.text
        await stack.terminal(http, [created.json()["id"]])
    [process] = stack.processes
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.proc.wait, 30) == 0
    conn = await asyncpg.connect(stack.database_url)
    try:
        kept = await conn.fetchval(
            "SELECT traceparent FROM jobs WHERE id = $1", created.json()["id"]
        )
    finally:
        await conn.close()
    assert kept is None
    assert stack.collector.bodies == []
