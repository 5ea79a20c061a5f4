"""`max_concurrent_requests`: a provider answering 429 while too many API requests are being
handled at once, and the in-flight counters a test reads the client's concurrency from."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from simulators import RunningSimulators
from tests.simulators.apis import PROVIDERS, ProviderApi
from tests.simulators.helpers import configure, job_ended, stats, stats_when

# Each provider's 429 body, the same as the `rate_limit_next` fault's.
RATE_LIMITED: dict[str, Any] = {
    "krea": {"error": "maximum concurrent jobs reached"},
    "fal": {"detail": "rate limit exceeded"},
    "scenario": {
        "message": "Too many requests",
        "details": {"actionName": "generate", "actionLimit": 10},
    },
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_429_exactly_while_the_limit_is_reached(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    api = ProviderApi(provider, sims, http)
    job_id = await api.created("busy")
    await job_ended(http, sims, provider, job_id)
    # Silence holds status requests for as long as the test needs them in flight.
    await configure(
        http, sims, provider, max_concurrent_requests=2, retry_after_seconds=3, silent=True
    )

    first = asyncio.create_task(api.status(job_id))
    await stats_when(http, sims, provider, in_flight_requests=1)
    second = asyncio.create_task(api.status(job_id))  # still under the limit: let in
    await stats_when(http, sims, provider, in_flight_requests=2)
    over = [await api.status(job_id), await api.submit("more"), await api.cancel(job_id)]
    control = await http.get(f"{sims.control_url(provider)}/jobs")
    file = await http.get(f"{sims.roots[provider]}/_sim/files/out-2x2.png")
    at_limit = await stats(http, sims, provider)
    await configure(http, sims, provider, silent=False)
    held = [await first, await second]
    await stats_when(http, sims, provider, in_flight_requests=0)
    after = await api.status(job_id)

    for answer in over:
        assert (answer.status_code, answer.json()) == (429, RATE_LIMITED[provider])
        assert answer.headers["Retry-After"] == "3"
    assert (control.status_code, file.status_code) == (200, 200)
    assert (at_limit["in_flight_requests"], at_limit["peak_in_flight_requests"]) == (2, 2)
    assert at_limit["rate_limited"] == 3
    # A refused request never reaches its handler: not counted as a submit or a cancel.
    assert (at_limit["submits"], at_limit["cancels"], at_limit["jobs_created"]) == (1, 0, 1)
    assert [answer.status_code for answer in held] == [200, 200]
    assert after.status_code == 200
    assert (await stats(http, sims, provider))["peak_in_flight_requests"] == 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_slow_request_holds_its_place_under_the_limit(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, max_concurrent_requests=1, slow_seconds=600)
    api = ProviderApi(provider, sims, http)

    slow = asyncio.create_task(api.submit("slow"))
    await stats_when(http, sims, provider, in_flight_requests=1)
    refused = await api.submit("refused")
    counts = await stats(http, sims, provider)
    # A reset ends the injected delay: the slow submit goes on and creates its job.
    await http.post(f"{sims.control_url(provider)}/reset")
    first = await slow

    assert (refused.status_code, refused.json()) == (429, RATE_LIMITED[provider])
    assert refused.headers["Retry-After"] == "1"
    assert (counts["rate_limited"], counts["peak_in_flight_requests"]) == (1, 1)
    assert counts["submits"] == 0  # the slow one is still in its delay
    assert first.status_code == 200


async def test_peak_in_flight_requests_counts_what_a_client_sends_at_once(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    api = ProviderApi("krea", sims, http)
    control = sims.control_url("krea")
    job_id = await api.created("watched")
    await configure(http, sims, "krea", silent=True)  # no limit: nothing is refused

    reads = [asyncio.create_task(api.status(job_id)) for _ in range(3)]
    await stats_when(http, sims, "krea", in_flight_requests=3)
    during = (await http.post(f"{control}/stats/reset-peak")).json()
    await configure(http, sims, "krea", silent=False)
    answers = [await read for read in reads]
    settled = await stats_when(http, sims, "krea", in_flight_requests=0)
    restarted = (await http.post(f"{control}/stats/reset-peak")).json()
    await api.status(job_id)
    one = await stats(http, sims, "krea")

    assert during == {"in_flight_requests": 3, "peak_in_flight_requests": 3}
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert (settled["peak_in_flight_requests"], settled["rate_limited"]) == (3, 0)
    assert restarted == {"in_flight_requests": 0, "peak_in_flight_requests": 0}
    assert one["peak_in_flight_requests"] == 1
    await http.post(f"{control}/reset")
    assert (await stats(http, sims, "krea"))["peak_in_flight_requests"] == 0


async def test_a_limit_of_zero_refuses_every_api_request_but_no_control(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "fal", max_concurrent_requests=0)
    api = ProviderApi("fal", sims, http)

    submit = await api.submit("never")
    jwks = await http.get(sims.fal_jwks_url)
    controls = await http.get(f"{sims.control_url('fal')}/config")
    invalid = await http.post(
        f"{sims.control_url('fal')}/config", json={"max_concurrent_requests": -1}
    )

    assert submit.status_code == 429
    assert (jwks.status_code, controls.status_code, invalid.status_code) == (200, 200, 400)
    assert (await stats(http, sims, "fal"))["rate_limited"] == 1
