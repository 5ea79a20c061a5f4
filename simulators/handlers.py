"""Decorators for the providers' route handlers: what every handler used to repeat.

A handler is a simulator method taking the request (and maybe more). Stack them outermost
first, in the order the checks run:

    @counted("status_requests")   # count every request, refused ones too
    @authenticated                # 401 in the provider's shape unless the credentials match
    @held_while_silent            # no answer at all while the `silent` fault is on
    @poll_faults                  # an injected 5xx instead of the answer
    async def _get_job(self, request: web.Request) -> web.StreamResponse: ...

`@submit_faults` takes the place of `@held_while_silent` and `@poll_faults` on submit handlers:
an injected 429 or 5xx, or the refusal of the submit mode in force, before the handler runs,
and, once it has created a job (a 2xx answer), maybe the answer lost after all.

Helpers deep in a handler (an unknown job's 404, a bad page size) `raise Answer(response)`;
the `answer_early` middleware sends it.
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
# The status an access log gives a request whose client closed the connection unanswered.
CLIENT_CLOSED_REQUEST = 499
# Looks at a request before its handler: an answer to send instead, or None to go on.
Check: TypeAlias = Callable[["ProviderSimulator[Any]", web.Request], web.StreamResponse | None]


class Answer(Exception):
    """Raised to end a handler with `response` (a 404 for an unknown job, say)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


@web.middleware
async def answer_early(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Send the response of an `Answer` raised by a handler."""
    try:
        return await handler(request)
    except Answer as answer:
        return answer.response


def refusing(check: Check) -> Callable[[Method[S, P]], Method[S, P]]:
    """A decorator that runs `check` first and sends its answer, if any, instead."""

    def decorate(handler: Method[S, P]) -> Method[S, P]:
        @functools.wraps(handler)
        async def checked(
            sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
        ) -> web.StreamResponse:
            refusal = check(sim, request)
            if refusal is not None:
                return refusal
            return await handler(sim, request, *args, **kwargs)

        return checked

    return decorate


def counted(stat: str) -> Callable[[Method[S, P]], Method[S, P]]:
    """Count every request the handler receives in `GET /_sim/stats` under `stat`."""

    def count(sim: ProviderSimulator[Any], request: web.Request) -> None:
        del request
        sim.stats[stat] += 1

    return refusing(count)


def _unauthenticated(sim: ProviderSimulator[Any], request: web.Request) -> web.Response | None:
    if sim.authorized(request):
        return None
    sim.stats["auth_failures"] += 1
    return sim.error_response(401, sim.unauthorized_message)


def _poll_fault(sim: ProviderSimulator[Any], request: web.Request) -> web.Response | None:
    del request
    return sim.faults.before_read()


# A 401 (counted as `auth_failures`) unless the request carries the credentials in force.
authenticated = refusing(_unauthenticated)
# An injected 5xx instead of the answer, while `poll_error_next` lasts (one per request).
poll_faults = refusing(_poll_fault)


def held_while_silent(handler: Method[S, P]) -> Method[S, P]:
    """Hold a status, result, list or asset request unanswered while the provider is silent;
    it then answers as usual (see `simulators.silence`). A request whose client gave up
    meanwhile goes no further: it would only use up faults for an answer nobody reads."""

    @functools.wraps(handler)
    async def held(
        sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
    ) -> web.StreamResponse:
        if not await sim.silence.hold(request):
            # Never written (the connection is closed); 499 is what an access log says then.
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        return await handler(sim, request, *args, **kwargs)

    return held


def submit_faults(handler: Method[S, P]) -> Method[S, P]:
    """Injected 429 / 5xx (or `submit_mode`'s refusal) before a submit; after one that created
    a job, maybe a lost answer.

    A submit handler answers 2xx exactly when it created a job: only then can the
    error-after-submit fault hide that job behind a 5xx or a dropped connection.
    """

    @functools.wraps(handler)
    async def gated(
        sim: S, request: web.Request, /, *args: P.args, **kwargs: P.kwargs
    ) -> web.StreamResponse:
        refusal = sim.faults.before_submit()
        if refusal is not None:
            return refusal
        answer = await handler(sim, request, *args, **kwargs)
        if not 200 <= answer.status < 300:
            return answer
        lost = sim.faults.after_submit(request)
        return answer if lost is None else lost

    return gated
