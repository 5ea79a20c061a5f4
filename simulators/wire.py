"""What the simulators read and write on the wire: JSON bodies, timestamps, Retry-After, URLs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

# Every simulator's control API (config, stats, jobs, reset, files) lives under this prefix.
CONTROL_PREFIX = "/_sim"


def iso_ms(wall: float) -> str:
    """Format wall-clock seconds the way the providers do: `2025-01-15T10:30:00.000Z`."""
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Answer JSON serialised with orjson (fast enough for load tests against the simulator)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


async def read_json(request: web.Request) -> tuple[Any, str | None]:
    """Return (body, None), or (None, reason) when the body is not valid JSON."""
    raw = await request.read()
    if not raw:
        return None, "request body is empty"
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, f"request body is not valid JSON: {exc}"


async def read_json_object(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """Return (object, None), or ({}, reason) when the body is not a JSON object."""
    body, error = await read_json(request)
    if error is None and not isinstance(body, dict):
        error = "request body must be a JSON object"
    if error is not None:
        return {}, error
    return body, None


def format_seconds(seconds: float) -> str:
    """Render a Retry-After value: an integer when whole, as HTTP expects, else a decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def is_http_url(value: str) -> bool:
    """Accept only absolute http(s) URLs as callback targets, as the providers do."""
    return re.match(r"^https?://[^\s/]+", value) is not None
