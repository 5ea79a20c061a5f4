"""Edges of every request: request id and log context, the JSON error format, API tokens."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from service.errors import ServiceError, Unauthorized
from service.logs import REDACTED, get_logger, is_secret_key
from service.metrics import HTTP_REQUEST_DURATION

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    503: "service_unavailable",
}


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson (pydantic models must be dumped first)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    return json_response(
        {"error": {"code": code, "message": message, "details": details or []}}, status=status
    )


def loggable_path(request: web.Request) -> str:
    """The request's path with its secret route variables (a callback's `{token}`) masked: a
    callback URL in a log line would let its reader forge that job's callbacks."""
    path = request.path
    for name, value in request.match_info.items():
        if value and is_secret_key(name):
            path = path.replace(value, REDACTED)
    return path


#: The route label of a request no route matched (404, 405): never the raw path, which is
#: anyone's choice and would make the label values unbounded.
UNMATCHED = "unmatched"
#: Methods a client can send are anyone's choice too: the others are counted as `other`.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The status of a request whose handler was cancelled (the client went away), as nginx says.
CLIENT_CLOSED = 499

_Observe = Callable[[float], None]
_observers: dict[tuple[str, str, int], _Observe] = {}


def route_label(request: web.Request) -> str:
    """The matched route's pattern (`/v1/jobs/{job_id}`), or `unmatched`."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    """Records one request in http_request_duration_seconds. The histogram's child is cached
    per (method, route, status), every part bounded, so the hot path is one dict lookup and one
    observe, not the registry's label lookup under its lock."""
    method = request.method if request.method in _METHODS else "other"
    key = (method, route_label(request), status)
    observe = _observers.get(key)
    if observe is None:
        observe = HTTP_REQUEST_DURATION.labels(key[0], key[1], str(status)).observe
        _observers[key] = observe
    observe(seconds)


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds request_id (the caller's X-Request-Id when sane) to every log line of the request,
    and times the request (http_request_duration_seconds): it is the outermost middleware, so
    the time and status are those of the answer sent, errors included."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect (errors are answered by error_middleware)
        observe_request(request, exc.status, time.perf_counter() - started)
        raise
    except BaseException:  # cancelled: the client went away
        observe_request(request, CLIENT_CLOSED, time.perf_counter() - started)
        raise
    response.headers["X-Request-Id"] = request_id
    elapsed = time.perf_counter() - started
    observe_request(request, response.status, elapsed)
    log = get_logger("service.http")
    if log.is_enabled_for(logging.DEBUG):  # every request passes here: no work for a dropped line
        log.debug(
            "request_handled",
            method=request.method,
            path=loggable_path(request),
            status=response.status,
            duration_ms=round(elapsed * 1000, 2),
        )
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `{"error": {"code", "message", "details"}}` with its status."""
    log = get_logger("service.http")
    try:
        return await handler(request)
    except ServiceError as exc:
        if exc.status >= 500:
            log.warning(
                "request_failed", code=exc.code, status=exc.status, path=loggable_path(request)
            )
        else:
            log.info(
                "request_rejected", code=exc.code, status=exc.status, path=loggable_path(request)
            )
        return error_response(exc.status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = "no such route" if exc.status == 404 else exc.reason
        response = error_response(exc.status, code, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("request_crashed", path=loggable_path(request))
        return error_response(500, "internal_error", "internal error")


def token_middleware(tokens: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Requires `Authorization: Bearer <token>` on /v1/* when API tokens are configured.

    Every configured token is compared, each in constant time, so neither the answer's timing
    nor which token matched tells anything about the tokens.
    """
    encoded = [t.encode() for t in tokens]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if encoded and request.path.startswith("/v1/"):
            header = request.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            candidate = presented.strip().encode() if scheme.lower() == "bearer" else b""
            matched = False
            for token in encoded:
                matched |= hmac.compare_digest(candidate, token)
            if not candidate or not matched:
                raise Unauthorized("missing or invalid API token")
        return await handler(request)

    return middleware
