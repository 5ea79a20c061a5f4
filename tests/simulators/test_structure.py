"""The simulators' shared parts: the handler decorators' order, one config per provider with
flat keys over `/_sim/config`, and the package staying out of the service's wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from simulators import (
    FalConfig,
    FalSimulator,
    KreaConfig,
    KreaSimulator,
    RunningSimulators,
    ScenarioConfig,
    SimulatorConfig,
)
from tests.simulators.helpers import configure, stats

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_refused_credentials_are_counted_and_consume_no_fault(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", poll_error_next=1, rate_limit_next=1)
    wrong = {"Authorization": "Bearer nope"}

    status = await http.get(f"{sims.krea_url}/jobs/x", headers=wrong)
    submit = await http.post(
        f"{sims.krea_url}/generate/image/bfl/flux-1-dev", json={"prompt": "x"}, headers=wrong
    )

    assert (status.status_code, submit.status_code) == (401, 401)
    counts = await stats(http, sims, "krea")
    assert (counts["status_requests"], counts["submits"], counts["auth_failures"]) == (1, 1, 2)
    assert (counts["poll_errors"], counts["rate_limited"]) == (0, 0)
    config = (await http.get(f"{sims.control_url('krea')}/config")).json()
    assert (config["poll_error_next"], config["rate_limit_next"]) == (1, 1)


async def test_a_rejected_submit_keeps_the_error_after_submit_fault(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "scenario", error_after_submit_next=1)
    auth = (sims.scenario_api_key, sims.scenario_api_secret)
    url = f"{sims.scenario_url}/generate/custom/model_flux-kontext-editing"

    invalid = await http.post(url, json={"prompt": "no references"}, auth=auth)
    created = await http.post(url, json={"prompt": "x", "referenceImages": []}, auth=auth)

    # Only a submit that created a job can lose its answer.
    assert (invalid.status_code, created.status_code) == (400, 500)
    counts = await stats(http, sims, "scenario")
    assert (counts["jobs_created"], counts["errors_after_submit"]) == (1, 1)


async def test_fal_checks_the_path_before_the_key_and_the_app_before_faults(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "fal", server_error_next=1)
    key = {"Authorization": f"Key {sims.fal_key}"}

    control_typo = await http.post(f"{sims.fal_url}/_sim/nothing", json={})
    no_key = await http.post(f"{sims.fal_url}/lonely", json={})
    no_app = await http.post(f"{sims.fal_url}/lonely", json={}, headers=key)
    faulted = await http.post(f"{sims.fal_url}/fal-ai/flux/krea", json={"prompt": "x"}, headers=key)

    assert (control_typo.status_code, no_key.status_code, no_app.status_code) == (404, 401, 404)
    assert faulted.status_code == 503
    assert (await stats(http, sims, "fal"))["submits"] == 4


async def test_each_simulator_takes_its_own_flat_keys(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    krea = await configure(http, sims, "krea", krea_token="t2", queue_seconds=1.0)
    fal = (await http.get(f"{sims.control_url('fal')}/config")).json()
    foreign = await http.post(f"{sims.control_url('krea')}/config", json={"fal_key": "k"})

    assert (krea["krea_token"], krea["queue_seconds"]) == ("t2", 1.0)
    fal_only = {"fal_key", "fal_user_id", "fal_validate_on_submit", "callback_bad_signature"}
    assert fal_only <= set(fal)
    assert "krea_token" not in fal
    assert foreign.status_code == 400
    await http.post(f"{sims.control_url('krea')}/reset")
    after = (await http.get(f"{sims.control_url('krea')}/config")).json()
    assert after["krea_token"] == sims.krea_token


def test_a_provider_config_adopts_the_common_settings_of_a_shared_one() -> None:
    shared = SimulatorConfig(queue_seconds=3, fail_rate=0.5)

    krea = KreaSimulator(shared)
    fal = FalSimulator(FalConfig(fal_key="mine", run_seconds=9))

    assert isinstance(krea.config, KreaConfig)
    assert (krea.config.queue_seconds, krea.config.fail_rate) == (3, 0.5)
    assert krea.config.krea_token == KreaConfig().krea_token
    assert (fal.config.fal_key, fal.config.run_seconds) == ("mine", 9)
    assert ScenarioConfig.adopt(None) == ScenarioConfig()
    with pytest.raises(ValidationError):
        krea.update_config({"scenario_api_key": "k"})


def test_the_wheel_leaves_the_simulators_out_and_the_service_needs_none() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    probe = (
        "import sys, service.__main__, service.demo, service.web.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulators'))"
    )

    loaded = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert "simulators" not in wheel["only-include"]
    # The demo imports them only when it runs, so the installed wheel starts without them.
    assert loaded.stdout.strip() == "[]"
