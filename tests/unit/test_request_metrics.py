"""http_request_duration_seconds as the outermost middleware records it: the route's pattern or
`unmatched`, bounded methods, a redirect's status, 499 for a request whose client went away."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.metrics import REGISTRY
from service.web.middleware import UNMATCHED, request_context_middleware, route_label


async def request_to(method: str, path: str) -> web.Request:
    """A request matched against an app with the job and callback routes."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}", handler)
    app.router.add_post("/callbacks/{provider}/{job_id}/{token}", handler)
    app.freeze()
    request = make_mocked_request(method, path, app=app)
    match_info = await app.router.resolve(request)
    match_info.add_app(app)
    request._match_info = match_info
    return request


def count(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("http_request_duration_seconds_count", labels) or 0.0


async def test_the_route_label_is_the_pattern_never_the_path() -> None:
    assert route_label(await request_to("GET", "/v1/jobs/job_1")) == "/v1/jobs/{job_id}"
    callback = await request_to("POST", "/callbacks/krea/job_1/secret-token")
    assert route_label(callback) == "/callbacks/{provider}/{job_id}/{token}"
    assert route_label(await request_to("GET", "/nothing/here")) == UNMATCHED
    assert route_label(await request_to("DELETE", "/v1/jobs/job_1")) == UNMATCHED  # 405


async def test_answers_redirects_and_cancellations_are_recorded() -> None:
    request = await request_to("GET", "/v1/jobs/job_1")
    route = "/v1/jobs/{job_id}"
    before = {s: count("GET", route, s) for s in (200, 302, 499)}

    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def redirect(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    async def cancelled(_request: web.Request) -> web.StreamResponse:
        raise asyncio.CancelledError

    await request_context_middleware(request, answer)
    with pytest.raises(web.HTTPFound):
        await request_context_middleware(request, redirect)
    with pytest.raises(asyncio.CancelledError):
        await request_context_middleware(request, cancelled)
    assert {s: count("GET", route, s) - before[s] for s in before} == {200: 1, 302: 1, 499: 1}


async def test_an_unusual_method_is_counted_as_other() -> None:
    request = await request_to("PROPFIND", "/v1/jobs/job_1")

    async def not_allowed(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=405)

    before = count("other", UNMATCHED, 405)
    await request_context_middleware(request, not_allowed)
    assert count("other", UNMATCHED, 405) - before == 1
    assert count("PROPFIND", UNMATCHED, 405) == 0
