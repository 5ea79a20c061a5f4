"""Micro-benchmark of what http_request_duration_seconds costs per request (README, Metrics and
alerts): `python -m bench.middleware_cost`. Not part of `make bench` (no stack is started).

Measured in one process, in-loop, no socket: the outermost middleware
(request_context_middleware) around a handler that answers at once, on a request matched to the
callback route, with and without the histogram's observation; and observe_request alone. The
difference is the metric's cost on the hot path (the rest of the middleware, the request id
and log context, was there before)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.logs import configure_logging
from service.web import middleware

ROUNDS = 15
PER_ROUND = 20_000


async def _handler(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def _matched_request() -> web.Request:
    app = web.Application()
    app.router.add_post("/callbacks/{provider}/{job_id}/{token}", _handler)
    app.freeze()
    request = make_mocked_request("POST", "/callbacks/krea/job_01J/tok", app=app)
    match_info = await app.router.resolve(request)
    match_info.add_app(app)
    request._match_info = match_info
    return request


OBSERVE = middleware.observe_request


def _observe_nothing(request: web.Request, status: int, seconds: float) -> None:
    """observe_request's stand-in: the middleware's cost without the metric (a Mock would cost
    more than the metric itself)."""
    del request, status, seconds


async def _round_us(request: web.Request) -> float:
    """Microseconds per request through the middleware, over one round."""
    started = time.perf_counter()
    for _ in range(PER_ROUND):
        await middleware.request_context_middleware(request, _handler)
    return (time.perf_counter() - started) / PER_ROUND * 1e6


async def _with_and_without_us(request: web.Request) -> tuple[float, float]:
    """Best round of each, the two interleaved so that a noisy neighbour slows both alike."""
    with_metric, without_metric = float("inf"), float("inf")
    for _ in range(ROUNDS):
        with_metric = min(with_metric, await _round_us(request))
        middleware.observe_request = (
            _observe_nothing  # the module's global, as the middleware calls it
        )
        try:
            without_metric = min(without_metric, await _round_us(request))
        finally:
            middleware.observe_request = OBSERVE
    return with_metric, without_metric


def _observe_us(request: web.Request) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(PER_ROUND):
            middleware.observe_request(request, 200, 0.0012)
        best = min(best, (time.perf_counter() - started) / PER_ROUND * 1e6)
    return best


async def main() -> dict[str, Any]:
    configure_logging(level="info")  # the service's default: request_handled is not written
    request = await _matched_request()
    await _round_us(request)  # warm-up: the histogram's child is made and cached
    with_metric, without_metric = await _with_and_without_us(request)
    observe = _observe_us(request)
    return {
        "middleware_with_metric_us": round(with_metric, 2),
        "middleware_without_metric_us": round(without_metric, 2),
        "metric_cost_us": round(with_metric - without_metric, 2),
        "observe_request_alone_us": round(observe, 2),
    }


if __name__ == "__main__":
    figures = asyncio.run(main())
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"(microseconds per request, best of {ROUNDS} rounds of {PER_ROUND:,})")
