"""`silent`: a provider that takes jobs, then says nothing until it is told to speak again."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from simulators import RunningSimulators
from tests.simulators.apis import PROVIDERS, WEBHOOK_PROVIDERS, ProviderApi, status_name
from tests.simulators.helpers import (
    WebhookReceiver,
    callbacks_settled,
    configure,
    job_ended,
    sim_job,
    stats,
    stats_when,
)

COMPLETED = {"krea": "completed", "fal": "COMPLETED", "scenario": "success"}
CANCELLED = {"krea": "cancelled", "fal": "COMPLETED", "scenario": "canceled"}
# Long enough to be sure no webhook is on its way; the simulator's own state says so first.
NO_WEBHOOK_SECONDS = 0.3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_silent_provider_takes_submits_and_holds_every_read_until_it_speaks(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, silent=True)
    api = ProviderApi(provider, sims, http)

    submitted = await api.submit("quiet")
    job_id = api.job_id(submitted)
    await job_ended(http, sims, provider, job_id)  # the control API still answers
    reads = {name: asyncio.create_task(read()) for name, read in api.reads(job_id).items()}
    held = await stats_when(http, sims, provider, silent_holds=len(reads))
    still_held = [name for name, task in reads.items() if not task.done()]
    await configure(http, sims, provider, silent=False)
    answers = {name: await task for name, task in reads.items()}

    assert submitted.status_code == 200
    assert still_held == list(reads)
    assert held["in_flight_requests"] == len(reads)
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(
        reads, 200
    )
    assert status_name(provider, answers["status"].json()) == COMPLETED[provider]
    counts = await stats_when(http, sims, provider, in_flight_requests=0)
    assert (counts["silent_holds"], counts["poll_errors"], counts["server_errors"]) == (
        len(reads),
        0,
        0,
    )


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_held_request_is_never_answered_and_ends_when_the_client_gives_up(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    api = ProviderApi(provider, sims, http)
    job_id = await api.created("nobody home")
    await configure(http, sims, provider, silent=True, poll_error_next=1)

    with pytest.raises(httpx.ReadTimeout):
        await api.status(job_id, timeout=0.2)

    # The hold notices the closed connection and lets its place go.
    counts = await stats_when(http, sims, provider, in_flight_requests=0)
    assert (counts["silent_holds"], counts["status_requests"]) == (1, 1)
    config = (await http.get(f"{sims.control_url(provider)}/config")).json()
    assert config["poll_error_next"] == 1  # held, not answered with the armed 5xx


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_no_webhook_while_silent_then_the_late_completion_reports(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver, provider: str
) -> None:
    await configure(http, sims, provider, silent=True)
    api = ProviderApi(provider, sims, http)

    job_id = await api.created("late", webhook=f"{receiver.url}/late")
    job = await job_ended(http, sims, provider, job_id)
    quiet = await stats(http, sims, provider)
    with pytest.raises(TimeoutError):
        await receiver.wait_for(1, deadline=NO_WEBHOOK_SECONDS)
    await configure(http, sims, provider, silent=False)
    (delivery,) = await receiver.wait_for(1)

    assert (job["outcome"], job["callback_state"]) == ("succeeded", "held")
    assert (quiet["callbacks_held"], quiet["callbacks_pending"], quiet["callback_attempts"]) == (
        1,
        0,
        0,
    )
    body = delivery.json()
    if provider == "krea":
        assert (body["job_id"], body["status"]) == (job_id, "completed")
    else:
        assert (body["request_id"], body["status"]) == (job_id, "OK")
    assert (await callbacks_settled(http, sims, provider, job_id))["callback_state"] == "delivered"
    status = await api.status(job_id)
    assert status_name(provider, status.json()) == COMPLETED[provider]


async def test_a_job_created_before_the_silence_still_sends_its_webhook(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await configure(http, sims, "krea", queue_seconds=60)
    api = ProviderApi("krea", sims, http)
    job_id = await api.created("before", webhook=f"{receiver.url}/before")
    await configure(http, sims, "krea", silent=True)

    cancelled = await api.cancel(job_id)
    (delivery,) = await receiver.wait_for(1)

    assert cancelled.status_code == 200
    assert delivery.json()["status"] == "cancelled"
    assert (await stats(http, sims, "krea"))["callbacks_held"] == 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancel_is_answered_while_silent_and_its_webhook_waits_for_the_silence_to_end(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver, provider: str
) -> None:
    await configure(http, sims, provider, queue_seconds=60, silent=True)
    api = ProviderApi(provider, sims, http)
    webhook = f"{receiver.url}/c" if provider in WEBHOOK_PROVIDERS else None

    job_id = await api.created("to cancel", webhook=webhook)
    cancelled = await api.cancel(job_id)
    job = await sim_job(http, sims, provider, job_id)
    if webhook is not None:
        with pytest.raises(TimeoutError):
            await receiver.wait_for(1, deadline=NO_WEBHOOK_SECONDS)
    await configure(http, sims, provider, silent=False)
    status = (await api.status(job_id)).json()

    if provider == "fal":
        assert (cancelled.status_code, cancelled.json()) == (
            202,
            {"status": "CANCELLATION_REQUESTED"},
        )
        assert status["error_type"] == "request_cancelled"
    else:
        assert cancelled.status_code == 200
        assert status_name(provider, cancelled.json()) == CANCELLED[provider]
    assert status_name(provider, status) == CANCELLED[provider]
    assert job["outcome"] == "cancelled"
    if webhook is None:
        return
    assert job["callback_state"] == "held"
    (delivery,) = await receiver.wait_for(1)
    assert delivery.json()["status"] == ("cancelled" if provider == "krea" else "ERROR")


@pytest.mark.parametrize("provider", WEBHOOK_PROVIDERS)
async def test_with_callback_on_cancel_off_a_silent_cancelled_job_never_reports(
    sims: RunningSimulators, http: httpx.AsyncClient, receiver: WebhookReceiver, provider: str
) -> None:
    await configure(http, sims, provider, queue_seconds=60, silent=True, callback_on_cancel=False)
    api = ProviderApi(provider, sims, http)

    job_id = await api.created("forgotten", webhook=f"{receiver.url}/f")
    cancelled = await api.cancel(job_id)
    await configure(http, sims, provider, silent=False)

    assert cancelled.status_code in (200, 202)
    job = await sim_job(http, sims, provider, job_id)
    assert (job["outcome"], job["callback_state"]) == ("cancelled", "none")
    assert (await stats(http, sims, provider))["callbacks_pending"] == 0
    assert receiver.deliveries == []


async def test_a_reset_lets_held_requests_answer(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    api = ProviderApi("scenario", sims, http)
    job_id = await api.created("held across a reset")
    await configure(http, sims, "scenario", silent=True)
    held = asyncio.create_task(api.status(job_id))
    await stats_when(http, sims, "scenario", silent_holds=1)

    await http.post(f"{sims.control_url('scenario')}/reset")
    answer = await held

    assert answer.status_code == 404  # the job was forgotten with the rest
    assert (await http.get(f"{sims.control_url('scenario')}/config")).json()["silent"] is False
