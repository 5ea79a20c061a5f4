"""OpenTelemetry tracing (CONTRACT.md, Operations): the one place that speaks to OpenTelemetry.

On only when `Settings.tracing` (OpenTelemetry's own variables name an OTLP endpoint); the SDK
reads every OTEL_* variable itself (endpoint, headers, timeout, service name and resource,
sampler, batching). Off, nothing is installed: no tracer provider, no instrumentation, and each
helper below returns at once.

A job is one trace. `POST /v1/jobs` is the aiohttp server instrumentation's span, continuing
the client's `traceparent`; its context is stored with the job (`jobs.traceparent`, W3C), and
the later work on the job, on whichever instance, starts a span whose parent is that context:
`job.submit`, `job.poll`, `job.cancel`... (the runner's action, with the provider's HTTP client
spans and the database's below it), `job.callback` (a provider callback processed, linked to the
HTTP request that carried it) and `client_webhook.attempt` (each delivery attempt, with the HTTP
client span whose context the request carries as `traceparent`).

The SDK's side (provider, sampler, exporter, the aiohttp server and asyncpg instrumentations)
is service.tracing.pipeline, imported only when tracing is on. Database statements are traced
inside a trace only, and no secret leaves in a span: every span passes the logs' redaction
before it is exported (see there).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from service.config import Settings

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

#: The longest the export of the spans still queued may hold up the end of the process.
SHUTDOWN_FLUSH_S = 5.0

_W3C = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[object] = nullcontext()
#: This process's tracer; None while tracing is off (the helpers then do nothing).
_tracer: Tracer | None = None


class TracedJob(Protocol):
    """What a job's span says of it (a JobRecord)."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def traceparent(self) -> str | None: ...


@dataclass(frozen=True)
class Tracing:
    """Tracing set up in this process (`setup`); `shutdown` once the app has stopped."""

    provider: TracerProvider

    def shutdown(self) -> None:
        """Exports the spans still queued and stops, waiting SHUTDOWN_FLUSH_S at most (an
        unreachable collector must not hold the process: what is left then is lost)."""
        flush = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        flush.start()
        flush.join(SHUTDOWN_FLUSH_S)


def setup(settings: Settings) -> Tracing | None:
    """Installs the tracer provider (OTLP/HTTP exporter, batched) and the aiohttp server and
    asyncpg instrumentations for this process, before the app is built; None when tracing is
    off, and then nothing at all is installed (the SDK is not even imported). Once per process
    (OpenTelemetry's provider is global): `serve` calls it in each of its processes."""
    global _tracer
    if not settings.tracing:
        return None
    from service.tracing.pipeline import install

    provider = install()
    _tracer = provider.get_tracer("service")
    return Tracing(provider)


def instrument_client(client: httpx.AsyncClient) -> None:
    """Traces a provider client's requests (an HTTP client span each, `traceparent` sent),
    whatever its transport (httpx-aiohttp's is not httpx's own transport, the one the
    instrumentor's process-wide `instrument()` wraps); nothing when tracing is off."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=trace.get_tracer_provider())


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (the request creating a job), stored with the
    job so that later work joins its trace; None when tracing is off or no span is current."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def span(
    name: str, *, parent: str | None, attributes: Mapping[str, AttributeValue]
) -> AbstractContextManager[object]:
    """A span of a job's work, current within the block: its parent is the job's stored
    `traceparent` (the current span when the job has none), and the current span, when it is
    of another trace (the HTTP request of a provider's callback), is linked. An exception
    leaving the block is recorded and sets the span's status to error."""
    if _tracer is None:
        return _OFF
    links = []
    current = trace.get_current_span().get_span_context()
    context = _W3C.extract({"traceparent": parent}) if parent else None
    stored = trace.get_current_span(context).get_span_context() if context else current
    if current.is_valid and current.trace_id != stored.trace_id:
        links.append(Link(current))
    return _tracer.start_as_current_span(name, context, attributes=attributes, links=links)


def job_span(name: str, job: TracedJob) -> AbstractContextManager[object]:
    """`span` for one piece of a job's work, named by it (`job.submit`, `job.callback`...)."""
    if _tracer is None:
        return _OFF
    attributes: dict[str, AttributeValue] = {
        "job.id": job.id,
        "job.provider": job.provider,
        "job.model": job.model,
        "job.status": str(job.status),
    }
    if job.attempt is not None:
        attributes["job.attempt"] = job.attempt  # a routed job's attempt
    return span(name, parent=job.traceparent, attributes=attributes)


def client_span(method: str, url: str, headers: dict[str, str]) -> AbstractContextManager[object]:
    """The HTTP client span of one request to a client's webhook URL, its context injected
    into `headers` (`traceparent`). Its attributes name the scheme, host and port, never the
    path or the query: a client's URL may itself be a secret (a capability URL)."""
    if _tracer is None:
        return _OFF
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method, "url.scheme": parts.scheme,
        "server.address": parts.hostname or "", "server.port": port,
    }  # fmt: skip
    client = _tracer.start_as_current_span(method, kind=SpanKind.CLIENT, attributes=attributes)
    return _Injected(client, headers)


class _Injected(AbstractContextManager[object]):
    """Enters `inner` (a span made current), then writes its context into `headers`."""

    def __init__(self, inner: AbstractContextManager[object], headers: dict[str, str]) -> None:
        self._inner = inner
        self._headers = headers

    def __enter__(self) -> object:
        entered = self._inner.__enter__()
        propagate.inject(self._headers)
        return entered

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._inner.__exit__(*exc_info)


def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Adds what the work found (statuses, outcomes) to the current span; None values are left
    out."""
    if _tracer is None:
        return
    trace.get_current_span().set_attributes(
        {key: value for key, value in attributes.items() if value is not None}
    )


def http_outcome(status: int | None, error: str | None) -> None:
    """The answer to the current HTTP client span: its status code, and an error status for
    no answer or a 4xx/5xx one."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if status is not None:
        current.set_attribute("http.response.status_code", status)
    if status is None or status >= 400:
        current.set_attribute("error.type", str(status) if status is not None else "no_answer")
        current.set_status(Status(StatusCode.ERROR, error))


def failed(error: BaseException) -> None:
    """Marks the current span failed by an error the work handled (a provider's refusal, a
    timeout) without letting it leave the span."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    current.set_attribute("error.type", type(error).__name__)
    current.set_status(Status(StatusCode.ERROR, str(error)))
