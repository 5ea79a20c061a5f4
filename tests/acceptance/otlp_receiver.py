"""An OpenTelemetry collector as small as a test needs: OTLP over HTTP (`POST /v1/traces`, an
`ExportTraceServiceRequest` in protobuf, decoded with opentelemetry-proto), keeping every span
it is sent and every body as it came, and waking its waiters at each export.

Run alone, it prints each span it receives on a line, to watch a service trace without a
collector of your own (README, "Tracing"):

    .venv/bin/python -m tests.acceptance.otlp_receiver --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.chaos.harness import serve_on_free_port

T = TypeVar("T")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name: which instance sent it
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL...
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span
    error: bool

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "links": [list(link) for link in self.links]}


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        links=tuple(
                            (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                        ),
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                    )
                )
    return spans


class OtlpReceiver:
    """`url` is what OTEL_EXPORTER_OTLP_ENDPOINT names (the exporter adds `/v1/traces`)."""

    def __init__(self, on_span: Callable[[ReceivedSpan], None] | None = None) -> None:
        self.on_span = on_span
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        self.changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner, self.url = await serve_on_free_port(app, port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.content_type == "application/x-protobuf", request.content_type
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        spans = _spans(export)
        if self.on_span is not None:
            for span in spans:
                self.on_span(span)
        async with self.changed:
            self.bodies.append(body)
            self.spans.extend(spans)
            self.changed.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(self, found: Callable[[list[ReceivedSpan]], T | None], within_s: float) -> T:
        """What `found` makes of the spans received, once it is not None: checked at each
        export, not on a clock (`within_s` only bounds a test that would otherwise hang)."""

        async def seen() -> T:
            async with self.changed:
                while (result := found(self.spans)) is None:
                    await self.changed.wait()
                return result

        return await asyncio.wait_for(seen(), within_s)


def span_line(span: ReceivedSpan) -> str:
    """One span on a line: who sent it, its trace, its place in the tree, its name and job."""
    job = span.attributes.get("job.id")
    return (
        f"{span.service} trace {span.trace_id} span {span.span_id} "
        f"parent {span.parent_id or '-'} {span.kind} {span.name!r}"
        + (f" job {job}" if job else "")
        + (" ERROR" if span.error else "")
    )


async def _print_spans(port: int) -> None:
    receiver = OtlpReceiver(on_span=lambda span: print(span_line(span), flush=True))
    await receiver.start(port)
    print(f"OTLP/HTTP receiver: OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await receiver.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the spans sent over OTLP/HTTP.")
    parser.add_argument("--port", type=int, default=4318)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_print_spans(parser.parse_args().port))
