"""`submit_mode`: one provider refusing or unavailable for every submit while the others work."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from simulators import RunningSimulators
from tests.simulators.apis import PROVIDERS, ProviderApi
from tests.simulators.helpers import configure, stats

# Each provider's documented client-error refusal (REFERENCE.md), in its own error shape.
REFUSALS: dict[str, tuple[int, Any]] = {
    "krea": (402, {"error": "out of credits"}),
    "fal": (
        422,
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": "submissions to this app are refused",
                    "type": "value_error",
                }
            ]
        },
    ),
    "scenario": (403, {"message": "Forbidden: this project may not generate"}),
}

# The provider's 503 in its error shape (fal's names its cause, as its infrastructure errors do).
UNAVAILABLE: dict[str, tuple[Any, dict[str, str]]] = {
    "krea": ({"error": "service unavailable"}, {}),
    "fal": (
        {"detail": "No runner available", "error_type": "runner_scheduling_failure"},
        {"x-fal-error-type": "runner_scheduling_failure"},
    ),
    "scenario": ({"message": "service unavailable"}, {}),
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_refuse_mode_refuses_every_submit_while_the_others_accept(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, submit_mode="refuse")
    api = ProviderApi(provider, sims, http)

    answers = [await api.submit(f"refused {n}") for n in range(3)]
    others = {
        other: (await ProviderApi(other, sims, http).submit("elsewhere")).status_code
        for other in PROVIDERS
        if other != provider
    }

    status, body = REFUSALS[provider]
    assert [(answer.status_code, answer.json()) for answer in answers] == [(status, body)] * 3
    assert set(others.values()) == {200}
    counts = await stats(http, sims, provider)
    assert (counts["submits"], counts["submits_refused"], counts["jobs_created"]) == (3, 3, 0)
    assert counts["validation_errors"] == 0
    assert (await http.get(f"{sims.control_url(provider)}/jobs")).json() == {"jobs": []}

    await configure(http, sims, provider, submit_mode="accept")
    assert (await api.submit("accepted again")).status_code == 200


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_unavailable_mode_answers_every_submit_with_the_server_error_status(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, submit_mode="unavailable")
    api = ProviderApi(provider, sims, http)

    first = await api.submit("down 1")
    second = await api.submit("down 2")
    await configure(http, sims, provider, server_error_status=500)
    other_status = await api.submit("down 3")

    body, headers = UNAVAILABLE[provider]
    for answer in (first, second):
        assert (answer.status_code, answer.json()) == (503, body)
        assert {name: answer.headers.get(name) for name in headers} == headers
    assert other_status.status_code == 500
    assert "x-fal-error-type" not in other_status.headers  # fal names only 503 and 504 causes
    counts = await stats(http, sims, provider)
    assert (counts["submits_unavailable"], counts["jobs_created"]) == (3, 0)
    assert counts["server_errors"] == 0  # that counter is server_error_next's


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_armed_counters_strike_before_the_submit_mode_and_reset_restores_accept(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, submit_mode="refuse", rate_limit_next=1)
    api = ProviderApi(provider, sims, http)

    limited = await api.submit("a")
    refused = await api.submit("b")
    await http.post(f"{sims.control_url(provider)}/reset")
    config = (await http.get(f"{sims.control_url(provider)}/config")).json()
    accepted = await api.submit("c")

    assert (limited.status_code, refused.status_code) == (429, REFUSALS[provider][0])
    assert config["submit_mode"] == "accept"
    assert accepted.status_code == 200


async def test_submit_mode_takes_only_its_three_values(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    wrong = await http.post(f"{sims.control_url('krea')}/config", json={"submit_mode": "maybe"})

    assert wrong.status_code == 400
    config = (await http.get(f"{sims.control_url('krea')}/config")).json()
    assert config["submit_mode"] == "accept"
