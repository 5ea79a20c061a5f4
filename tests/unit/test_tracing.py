"""Tracing's parts without a collector: nothing installed when it is off, the helpers' spans
and propagation on a tracer of the test's own (OpenTelemetry's global provider is never set in
this process), the sampler that keeps database statements inside traces, and the redaction
every span passes before export. tests/acceptance/test_tracing.py runs the whole of it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from schemas.jobs import JobStatus
from service import tracing
from service.archive.archiver import OutputArchiver
from service.archive.fetch import OutputFetcher
from service.archive.storage import S3Credentials, open_storage
from service.logs import REDACTED
from service.providers.base import JobRecord
from service.store.archive import ArchiveItem, ArchiveQueue
from service.tracing.pipeline import DatabaseSpansInTraces, RedactingExporter
from tests.conftest import REPO

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
STORED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TOKEN = "cbt_" + "Q" * 43  # shaped like a callback token


def installed_in_a_fresh_process(env: dict[str, str]) -> dict[str, object]:
    """What importing the whole service and calling tracing.setup leaves installed, in a fresh
    interpreter (the global provider and the instrumentations are process-wide)."""
    script = """
import json, sys
import aiohttp.web, asyncpg
from opentelemetry import trace
original = aiohttp.web.Application
import service.__main__, service.web.app
from service import tracing
from service.config import Settings
from service.providers.http import make_client
traced = tracing.setup(Settings.from_env())
client = make_client()
print(json.dumps({
    "sdk_modules": sorted(m for m in sys.modules if m.startswith(
        ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter"))),
    "aiohttp_app_replaced": aiohttp.web.Application is not original,
    "asyncpg_wrapped": hasattr(asyncpg.connection.Connection.fetch, "__wrapped__"),
    "httpx_wrapped": hasattr(client._transport.handle_async_request, "__wrapped__"),
    "provider": type(trace.get_tracer_provider()).__name__,
}))
if traced is not None:
    traced.shutdown()
"""
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", script], env={**base, **env}, cwd=REPO,
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_off_nothing_is_installed_nor_even_imported() -> None:
    off = installed_in_a_fresh_process({"OTEL_SERVICE_NAME": "no-endpoint"})
    assert off == {
        "sdk_modules": [], "aiohttp_app_replaced": False, "asyncpg_wrapped": False,
        "httpx_wrapped": False, "provider": "ProxyTracerProvider",
    }  # fmt: skip
    # The same probe sees everything installed when an endpoint is named (nothing is exported:
    # no span is made).
    on = installed_in_a_fresh_process({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert on["sdk_modules"] and on["provider"] == "TracerProvider"
    assert on["aiohttp_app_replaced"] and on["asyncpg_wrapped"] and on["httpx_wrapped"]


def test_off_the_helpers_do_nothing() -> None:
    assert tracing.current_traceparent() is None
    headers: dict[str, str] = {}
    with tracing.client_span("POST", "https://client.example/hook", headers):
        tracing.http_outcome(500, "http 500")
    assert headers == {}
    with tracing.job_span("job.poll", record()):
        tracing.annotate({"job.applied": True})
    assert trace.get_current_span() is trace.INVALID_SPAN


def record(traceparent: str | None = STORED) -> JobRecord:
    from datetime import UTC, datetime

    return JobRecord(
        id="job_01ABC", provider="fal", model="fal-ai/flux/krea", status=JobStatus.SUBMITTED,
        provider_job_id=None, input={}, provider_state={}, cancel_requested=False,
        submit_started_at=None, submitted_at=None, attempts=0, created_at=datetime.now(UTC),
        route="flux-1-krea-dev", attempt=2, traceparent=traceparent,
    )  # fmt: skip


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, on a provider of the test's own (never the process's global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent else None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


def test_a_jobs_span_joins_its_stored_trace_and_links_the_request_it_came_in(
    exported: InMemorySpanExporter,
) -> None:
    assert tracing._tracer is not None
    with tracing._tracer.start_as_current_span("POST /callbacks/{provider}/{job_id}/{token}"):
        request_trace = tracing.current_traceparent()
        with tracing.job_span("job.callback", record()):
            tracing.annotate({"callback.outcome": "applied", "job.observed_status": None})
    callback, request = exported.get_finished_spans()
    assert hex_ids(callback) == (TRACE_ID, hex_ids(callback)[1], "00f067aa0ba902b7")
    assert dict(callback.attributes or {}) == {
        "job.id": "job_01ABC", "job.provider": "fal", "job.model": "fal-ai/flux/krea",
        "job.status": "submitted", "job.attempt": 2, "callback.outcome": "applied",
    }  # fmt: skip
    assert request_trace is not None
    assert request_trace.startswith(f"00-{hex_ids(request)[0]}-{hex_ids(request)[1]}-")
    [link] = callback.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == hex_ids(request)[:2]


def test_a_job_without_a_stored_trace_works_in_the_current_span(
    exported: InMemorySpanExporter,
) -> None:
    assert tracing._tracer is not None
    request = tracing._tracer.start_as_current_span("POST /callbacks/{provider}/{job_id}/{token}")
    with request, tracing.job_span("job.callback", record(traceparent=None)):
        pass
    callback, request = exported.get_finished_spans()
    assert hex_ids(callback)[0] == hex_ids(request)[0] and not callback.links
    assert hex_ids(callback)[2] == hex_ids(request)[1]


def test_a_webhook_request_carries_its_client_spans_context(
    exported: InMemorySpanExporter,
) -> None:
    headers = {"webhook-id": "msg_1"}
    url = f"https://client.example:8443/hooks/{TOKEN}?secret=s3cr3t"
    attempt_span = tracing.span(
        "client_webhook.attempt", parent=STORED, attributes={"webhook.id": "msg_1"}
    )
    with attempt_span:
        with tracing.client_span("POST", url, headers):
            tracing.http_outcome(503, "http 503")
        tracing.annotate({"webhook.outcome": "retry"})
    client, attempt = exported.get_finished_spans()
    assert headers["traceparent"] == f"00-{TRACE_ID}-{hex_ids(client)[1]}-01"
    assert hex_ids(client)[2] == hex_ids(attempt)[1] and hex_ids(attempt)[2] == "00f067aa0ba902b7"
    assert client.kind is SpanKind.CLIENT and client.status.status_code is StatusCode.ERROR
    # The client's URL may be a capability: scheme, host and port only.
    assert dict(client.attributes or {}) == {
        "http.request.method": "POST", "url.scheme": "https", "server.address": "client.example",
        "server.port": 8443, "http.response.status_code": 503, "error.type": "503",
    }  # fmt: skip
    assert dict(attempt.attributes or {}) == {"webhook.id": "msg_1", "webhook.outcome": "retry"}


def test_database_statements_are_recorded_inside_traces_only() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=DatabaseSpansInTraces(ALWAYS_ON), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    statement = {"db.system": "postgresql", "db.statement": "SELECT 1"}
    with tracer.start_as_current_span("SELECT", attributes=statement):  # a loop's claim
        pass
    with (
        tracer.start_as_current_span("job.poll"),
        tracer.start_as_current_span("SELECT", attributes=statement),
    ):
        pass
    with tracer.start_as_current_span("GET /healthz"):
        pass
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["SELECT", "job.poll", "GET /healthz"]
    assert exporter.get_finished_spans()[0].parent is not None
    # Otherwise the sampler OTEL_TRACES_SAMPLER chose decides.
    off = TracerProvider(sampler=DatabaseSpansInTraces(ALWAYS_OFF), shutdown_on_exit=False)
    assert not off.get_tracer("test").start_span("job.poll").is_recording()
    provider.shutdown()


def test_every_span_is_redacted_before_export() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(exporter)))
    tracer = provider.get_tracer("test")
    callback_url = f"http://svc/callbacks/fal/job_01ABC/{TOKEN}"
    with tracer.start_as_current_span(
        "POST",
        attributes={
            "url.full": f"https://queue.fal.run/fal-ai/flux/krea?fal_webhook={callback_url}",
            "http.target": f"/callbacks/krea/job_01ABC/{TOKEN}",
            "http.request.header.authorization": ("Key fal-key-0123456789",),
            "job.id": "job_01ABC",
            "http.response.status_code": 200,
        },
    ) as span:
        span.add_event(
            "exception", {"exception.message": f"Bearer tok-alpha-0123456789 at {callback_url}"}
        )
        span.set_status(StatusCode.ERROR, f"refused {callback_url}")
    [sent] = exporter.get_finished_spans()
    text = repr((sent.attributes, [e.attributes for e in sent.events], sent.status.description))
    for secret in (TOKEN, "fal-key-0123456789", "tok-alpha-0123456789"):
        assert secret not in text
    attributes = dict(sent.attributes or {})
    assert attributes["http.request.header.authorization"] == REDACTED
    assert (
        attributes["url.full"] == f"https://queue.fal.run/fal-ai/flux/krea?fal_webhook={REDACTED}"
    )
    assert attributes["http.target"] == f"/callbacks/krea/job_01ABC/{REDACTED}"
    assert (attributes["job.id"], attributes["http.response.status_code"]) == ("job_01ABC", 200)
    assert sent.status.status_code is StatusCode.ERROR and sent.name == "POST"
    provider.shutdown()


class FailureRecorder:
    """The one call of the archive queue that a failed attempt makes (no database here)."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    async def record_failure(self, item: ArchiveItem, **outcome: Any) -> bool:
        self.codes.append(outcome["code"])
        return True


async def test_a_failed_archive_attempt_is_an_error_span_of_the_jobs_trace(
    exported: InMemorySpanExporter, tmp_path: Path
) -> None:
    """An output whose signed URL has expired: the attempt fails without a request, and its
    span (in the job's stored trace) says why, without the URL's query."""
    recorder = FailureRecorder()
    storage = open_storage(tmp_path.as_uri(), s3=S3Credentials())
    assert storage is not None
    archiver = OutputArchiver(
        queue=cast(ArchiveQueue, recorder), storage=storage,
        fetcher=OutputFetcher(max_bytes=1024, allow_private=False),
        lease_s=60, max_attempts=3, backoff_base_s=1,
    )  # fmt: skip
    url = "https://cdn.example.com/out.png?Expires=1000&Signature=sig-secret"
    try:
        await archiver.handle(ArchiveItem("job_01ABC", 0, url, attempts=2, traceparent=STORED))
    finally:
        await archiver.close()
    [attempt] = exported.get_finished_spans()
    assert recorder.codes == ["url_expired"]
    assert (attempt.name, hex_ids(attempt)[0], hex_ids(attempt)[2]) == (
        "output.archive", TRACE_ID, "00f067aa0ba902b7",
    )  # fmt: skip
    assert attempt.status.status_code is StatusCode.ERROR
    assert dict(attempt.attributes or {}) == {
        "job.id": "job_01ABC", "output.index": 0, "output.attempt": 2, "url.scheme": "https",
        "server.address": "cdn.example.com", "error.type": "FetchFailed",
        "archive.outcome": "url_expired", "archive.retry": False,
    }  # fmt: skip
