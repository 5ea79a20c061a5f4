"""Outbound HTTP to providers: one pooled client each, explicit timeouts, and the boundary
where httpx/aiohttp exceptions and HTTP statuses become `ProviderError`s.

httpx's API runs over the `httpx-aiohttp` transport (several times the throughput of httpx's own
transport on this machine). That transport maps aiohttp's ServerDisconnectedError to
httpx.ConnectTimeout, so whether a request was sent is decided here from the aiohttp exception
it chains, never from the httpx class alone: only a failure to open the connection proves the
provider never saw the request.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, TypeVar

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel

from service import tracing
from service.logs import REDACTED, get_logger
from service.providers.base import (
    CancelOutcome,
    OutcomeUnknown,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderUnreachable,
    validated,
    without_nul,
)

P = TypeVar("P", bound=BaseModel)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=10.0)
MAX_RETRY_AFTER = 3600.0


def make_client(
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = 100,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A pooled client for one provider (tests pass an httpx.MockTransport), its requests
    traced when tracing is on."""
    client = httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        transport=transport
        or AiohttpTransport(limits=httpx.Limits(max_connections=max_connections)),
        event_hooks={"response": [_log_response]},
    )
    tracing.instrument_client(client)
    return client


def loggable_url(url: httpx.URL) -> str:
    """A request's URL with no password and no query values (fal's `fal_webhook` carries the
    job's callback token): the parameters' names are kept."""
    names = dict.fromkeys(name for name, _ in url.params.multi_items())
    query = "&".join(f"{name}={REDACTED}" for name in names)
    bare = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
    return f"{bare}?{query}" if query else bare


async def _log_response(response: httpx.Response) -> None:
    """The service's own line per provider request (httpx's own INFO line is turned off: it
    prints the whole URL)."""
    log = get_logger("service.providers")
    if not log.is_enabled_for(logging.DEBUG):  # every provider request: no work for a dropped line
        return
    request = response.request
    log.debug(
        "provider_http_request",
        method=request.method,
        url=loggable_url(request.url),
        status=response.status_code,
    )


def _certainly_not_sent(exc: httpx.HTTPError) -> bool:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError | TimeoutError):
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """Sends one request; transport failures become ProviderUnreachable or OutcomeUnknown."""
    try:
        return await client.request(method, url, json=json, headers=headers, params=params)
    except httpx.HTTPError as exc:
        kind = type(exc.__cause__ or exc).__name__
        if _certainly_not_sent(exc):
            raise ProviderUnreachable(f"{method} {_safe(url)}: could not connect ({kind})") from exc
        raise OutcomeUnknown(f"{method} {_safe(url)}: no answer ({kind})") from exc


async def request_as(
    model: type[P],
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    json: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> P:
    """One request whose 2xx answer is `model`; every failure raised as a ProviderError."""
    response = await send(client, method, url, json=json, headers=headers, params=params)
    check_status(response, what=what)
    return parse(model, response, what=what)


def _safe(url: str) -> str:
    return url.split("?", 1)[0]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _detail(response: httpx.Response) -> Any:
    """A refusal's body, kept with the error it becomes (U+0000 read as U+FFFD)."""
    try:
        return without_nul(response.json())
    except ValueError:
        return without_nul(response.text[:2000]) or None


def check_status(response: httpx.Response, *, what: str) -> None:
    """Raises the ProviderError matching a non-2xx answer, keeping the provider's body."""
    status = response.status_code
    if status < 300:
        return
    detail = _detail(response)
    if status == 429:
        raise ProviderRateLimited(
            f"{what}: rate limited",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            detail=detail,
        )
    if status >= 500:
        raise ProviderServerError(f"{what}: provider error {status}", status=status, detail=detail)
    raise ProviderRejected(f"{what}: refused with {status}", status=status, detail=detail)


def cancel_outcome(response: httpx.Response, *, what: str) -> CancelOutcome:
    """A 2xx answer to a cancel is its acceptance; a 4xx the provider's refusal (too late),
    recorded with its detail; 429 and 5xx are raised, so the cancel is sent again."""
    try:
        check_status(response, what=what)
    except ProviderRejected as exc:
        return CancelOutcome(accepted=False, provider_answer=f"refused {exc.status}: {exc.detail}")
    return CancelOutcome(accepted=True, provider_answer=str(response.status_code))


def parse(model: type[P], response: httpx.Response, *, what: str) -> P:
    """The answer's body as `model`, or ProviderProtocolError."""
    return validated(
        model, response.content,
        fail=lambda _: ProviderProtocolError(
            f"{what}: unexpected answer shape", status=response.status_code,
            detail=_detail(response),
        ),
    )  # fmt: skip
