"""Decorators for the providers' route handlers: what every handler used to repeat.

A handler is a simulator method taking the request (and maybe more). Stack them outermost
first, in the order the checks run:

    @counted("status_requests")   # count every request, refused ones too
    @authenticated                # 401 in the provider's shape unless the credentials match
    @poll_faults                  # an injected 5xx instead of the answer
    async def _get_job(self, request: web.Request) -> web.StreamResponse: ...

`@submit_faults` takes `@poll_faults`' place on submit handlers: an injected 429 or 5xx before
the handler runs, and, once it has created a job (a 2xx answer), maybe the answer lost after all.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeAlias, TypeVar

from aiohttp import web

if TYPE_CHECKING:
    from simulators.base import ProviderSimulator

S = TypeVar("S", bound="ProviderSimulator[Any]")
P = ParamSpec("P")
Method: TypeAlias = Callable[Concatenate[S, web.Request, P], Awaitable[web.StreamResponse]]


def counted(stat: str) -> Callable[[Method[S, P]], Method[S, P]]:
    """Count every request the handler receives in `GET /_sim/stats` under `stat`."""

    def decorate(handler: Method[S, P]) -> Method[S, P]:
        @functools.wraps(handler)
        async def counting(
            sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
        ) -> web.StreamResponse:
            sim.stats[stat] += 1
            return await handler(sim, request, *args, **kwargs)

        return counting

    return decorate


def authenticated(handler: Method[S, P]) -> Method[S, P]:
    """Answer 401 (counted as `auth_failures`) unless the request carries the credentials."""

    @functools.wraps(handler)
    async def checking(
        sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
    ) -> web.StreamResponse:
        if not sim.authorized(request):
            sim.stats["auth_failures"] += 1
            return sim.error_response(401, sim.unauthorized_message)
        return await handler(sim, request, *args, **kwargs)

    return checking


def poll_faults(handler: Method[S, P]) -> Method[S, P]:
    """Answer an injected 5xx instead, while `poll_error_next` lasts (one per request)."""

    @functools.wraps(handler)
    async def gated(
        sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
    ) -> web.StreamResponse:
        refused = sim.faults.before_read()
        if refused is not None:
            return refused
        return await handler(sim, request, *args, **kwargs)

    return gated


def submit_faults(handler: Method[S, P]) -> Method[S, P]:
    """Injected 429 / 5xx before a submit; after one that created a job, maybe a lost answer.

    A submit handler answers 2xx exactly when it created a job: only then can the
    error-after-submit fault hide that job behind a 5xx or a dropped connection.
    """

    @functools.wraps(handler)
    async def gated(
        sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
    ) -> web.StreamResponse:
        refused = sim.faults.before_submit()
        if refused is not None:
            return refused
        answer = await handler(sim, request, *args, **kwargs)
        if not 200 <= answer.status < 300:
            return answer
        lost = sim.faults.after_submit(request)
        return answer if lost is None else lost

    return gated
