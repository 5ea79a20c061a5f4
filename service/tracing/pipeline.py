"""The OpenTelemetry SDK's side of tracing, imported only when tracing is on: the tracer
provider with its resource, its sampler and its exporter (OTLP over HTTP with protobuf, every
setting from OpenTelemetry's own OTEL_* variables), and the instrumentations of the aiohttp
server and of asyncpg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, Status, TraceState
from opentelemetry.util.types import Attributes

from service.logs import redact_field, redact_text

#: The service's name in traces unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it.
DEFAULT_SERVICE_NAME = "imagejobs"
#: The attribute the asyncpg instrumentation marks its spans with (older and newer conventions).
DATABASE_SYSTEM = ("db.system", "db.system.name")


def install() -> TracerProvider:
    """The process's tracer provider, made global, and the instrumentations, which apply to
    the aiohttp applications and asyncpg connections made from now on."""
    provider = TracerProvider(resource=resource(), shutdown_on_exit=False)
    # The sampler OTEL_TRACES_SAMPLER chose (default: parent-based, always on), wrapped before
    # any tracer is made (a tracer keeps the sampler the provider had at its making).
    provider.sampler = DatabaseSpansInTraces(provider.sampler)
    provider.add_span_processor(BatchSpanProcessor(RedactingExporter(OTLPSpanExporter())))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return provider


def resource() -> Resource:
    """OpenTelemetry's resource from its variables, named `imagejobs` unless they name it."""
    found = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return found


class DatabaseSpansInTraces(Sampler):
    """`inner`, except that a database statement with no parent span is not recorded: the claim
    loops' periodic claims, the sealer's and the event hub's reads, and the write-combined
    batches that many jobs share would otherwise each be a trace of one span."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes and any(key in attributes for key in DATABASE_SYSTEM):
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"DatabaseSpansInTraces{{{self.inner.get_description()}}}"


def _clean(attributes: Attributes) -> dict[str, Any]:
    return {key: redact_field(key, value) for key, value in (attributes or {}).items()}


def redacted(span: ReadableSpan) -> ReadableSpan:
    """The span with its name, attributes (the span's, its events' and its links'), and status
    description redacted as a log line is (service.logs)."""
    status = span.status
    description = redact_text(status.description) if status.description else None
    return ReadableSpan(
        name=redact_text(span.name), context=span.context, parent=span.parent,
        resource=span.resource, attributes=_clean(span.attributes),
        events=[Event(e.name, _clean(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, _clean(link.attributes)) for link in span.links],
        kind=span.kind, status=Status(status.status_code, description),
        start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )  # fmt: skip


class RedactingExporter(SpanExporter):
    """`inner`, given every span redacted: the last line of defence that keeps secrets (a
    callback token in a URL's path, fal's `fal_webhook` query, credentials, signatures, an
    attribute named like a secret) out of the traces, whichever instrumentation wrote them.
    It runs in the batch processor's thread, off the requests' path."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redacted(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
