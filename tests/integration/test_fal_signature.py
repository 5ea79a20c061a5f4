"""fal webhook verification against the fal simulator's JWKS endpoint over real HTTP: key
rotation is picked up by refetching, and refetches happen at most once a minute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.providers.base import InvalidCallback
from service.providers.fal_signature import FalWebhookVerifier
from service.providers.http import make_client
from simulators import RunningSimulators, SimulatorConfig, start_simulators


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sims() -> AsyncIterator[RunningSimulators]:
    sims = await start_simulators(config=SimulatorConfig(queue_seconds=60, run_seconds=60))
    yield sims
    await sims.close()


async def test_rotation_is_picked_up_by_a_refetch_at_most_once_a_minute(
    sims: RunningSimulators,
) -> None:
    client = make_client()
    clock = FakeMonotonic()
    verifier = FalWebhookVerifier(jwks_url=sims.fal_jwks_url, client=client, monotonic=clock)
    fal = sims.fal
    async with client:
        # A job at the simulator, to render signed callbacks for.
        response = await client.post(f"{sims.fal_url}/fal-ai/flux/krea", json={"prompt": "x"},
                                     headers={"Authorization": f"Key {sims.fal_key}"})  # fmt: skip
        sim_job = fal.jobs[response.json()["request_id"]]

        body, headers = fal.render_callback(sim_job)
        assert await verifier.verify(headers, body) == sim_job.id
        assert fal.stats["jwks_requests"] == 1

        fal.rotate_key()
        body, headers = fal.render_callback(sim_job)
        clock.now += 30  # within the minute since the last fetch: no refetch yet
        with pytest.raises(InvalidCallback, match="does not verify"):
            await verifier.verify(headers, body)
        assert fal.stats["jwks_requests"] == 1

        clock.now += (
            31  # a minute has passed: the failure triggers one refetch, which finds the key
        )
        assert await verifier.verify(headers, body) == sim_job.id
        assert fal.stats["jwks_requests"] == 2

        fal.update_config({"callback_bad_signature": True})
        for _ in range(5):  # forged callbacks cannot make us hammer fal
            bad_body, bad_headers = fal.render_callback(sim_job)
            with pytest.raises(InvalidCallback):
                await verifier.verify(bad_headers, bad_body)
        assert fal.stats["jwks_requests"] == 2


async def test_stale_and_malformed_headers_are_refused_before_any_key_lookup(
    sims: RunningSimulators,
) -> None:
    client = make_client()
    verifier = FalWebhookVerifier(jwks_url=sims.fal_jwks_url, client=client)
    async with client:
        base = {"X-Fal-Webhook-Request-Id": "r", "X-Fal-Webhook-User-Id": "u",
                "X-Fal-Webhook-Timestamp": "1", "X-Fal-Webhook-Signature": "00" * 64}  # fmt: skip
        for headers, reason in [
            (base, "away from now"),
            ({**base, "X-Fal-Webhook-Timestamp": "soon"}, "not an integer"),
            ({**base, "X-Fal-Webhook-Signature": "zz"}, "not hex"),
            ({k: v for k, v in base.items() if k != "X-Fal-Webhook-User-Id"}, "missing header"),
        ]:
            with pytest.raises(InvalidCallback, match=reason):
                await verifier.verify(headers, b"{}")
        assert sims.fal.stats["jwks_requests"] == 0


async def test_a_signature_of_the_wrong_length_is_refused(sims: RunningSimulators) -> None:
    client = make_client()
    verifier = FalWebhookVerifier(jwks_url=sims.fal_jwks_url, client=client)
    async with client:
        response = await client.post(f"{sims.fal_url}/fal-ai/flux/krea", json={"prompt": "x"},
                                     headers={"Authorization": f"Key {sims.fal_key}"})  # fmt: skip
        body, headers = sims.fal.render_callback(sims.fal.jobs[response.json()["request_id"]])
        for signature in (
            "",
            headers["X-Fal-Webhook-Signature"][:-2],
            headers["X-Fal-Webhook-Signature"] + "00",
        ):
            with pytest.raises(InvalidCallback, match="does not verify"):
                await verifier.verify({**headers, "X-Fal-Webhook-Signature": signature}, body)


async def test_concurrent_first_callbacks_all_wait_for_the_first_key_fetch(
    sims: RunningSimulators,
) -> None:
    client = make_client()
    verifier = FalWebhookVerifier(jwks_url=sims.fal_jwks_url, client=client)
    async with client:
        response = await client.post(f"{sims.fal_url}/fal-ai/flux/krea", json={"prompt": "x"},
                                     headers={"Authorization": f"Key {sims.fal_key}"})  # fmt: skip
        sim_job = sims.fal.jobs[response.json()["request_id"]]
        callbacks = [sims.fal.render_callback(sim_job) for _ in range(50)]
        results = await asyncio.gather(*(verifier.verify(h, b) for b, h in callbacks))
    assert results == [sim_job.id] * 50
    assert sims.fal.stats["jwks_requests"] == 1
