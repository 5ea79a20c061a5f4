"""Shared simulator behaviour: control API, lazy jobs, served images, the command line."""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
import zlib
from pathlib import Path

import httpx
import pytest

from simulators import RunningSimulators
from simulators.__main__ import parse_args
from simulators.images import solid_jpeg, solid_png
from tests.simulators.apis import PROVIDERS, ProviderApi
from tests.simulators.helpers import DEADLINE_SECONDS, configure, stats, stats_when

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_config_is_merged_validated_and_reset(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    control = sims.control_url("krea")

    merged = await configure(http, sims, "krea", fail_rate=0.5, rate_limit_next=2)
    invalid = await http.post(f"{control}/config", json={"fail_rate": 2})
    unknown = await http.post(f"{control}/config", json={"no_such_fault": 1})
    current = (await http.get(f"{control}/config")).json()
    other = (await http.get(f"{sims.control_url('fal')}/config")).json()
    await http.post(f"{control}/reset")
    after_reset = (await http.get(f"{control}/config")).json()

    assert (merged["fail_rate"], merged["rate_limit_next"]) == (0.5, 2)
    assert merged["queue_seconds"] == 0.05  # untouched fields keep their values
    assert (invalid.status_code, unknown.status_code) == (400, 400)
    assert current == merged
    assert other["fail_rate"] == 0.0  # each simulator has its own config
    assert (after_reset["fail_rate"], after_reset["rate_limit_next"]) == (0.0, 0)


async def test_pending_jobs_cost_no_timer_or_task(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await configure(http, sims, "krea", queue_seconds=60)
    headers = {"Authorization": f"Bearer {sims.krea_token}"}
    url = f"{sims.krea_url}/generate/image/bfl/flux-1-dev"

    answers = await asyncio.gather(
        *(http.post(url, json={"prompt": f"p{n}"}, headers=headers) for n in range(200))
    )

    assert {answer.status_code for answer in answers} == {200}
    counts = await stats(http, sims, "krea")
    assert (counts["jobs"], counts["in_flight"], counts["callbacks_pending"]) == (200, 200, 0)


async def test_reset_forgets_jobs_and_stats(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    await http.post(
        f"{sims.scenario_url}/generate/custom/model_x",
        json={"prompt": "x"},
        auth=(sims.scenario_api_key, sims.scenario_api_secret),
    )
    before = await stats(http, sims, "scenario")

    await http.post(f"{sims.control_url('scenario')}/reset")

    assert (before["jobs"], before["submits"]) == (1, 1)
    after = await stats(http, sims, "scenario")
    assert set(after.values()) == {0}
    assert {"submits", "status_requests", "callbacks_sent", "callbacks_failed"} <= set(after)
    assert (await http.get(f"{sims.control_url('scenario')}/jobs")).json() == {"jobs": []}


def test_jpeg_is_baseline_with_the_requested_size() -> None:
    data = solid_jpeg(1024, 768)

    assert data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")
    start_of_frame = data.index(b"\xff\xc0")
    height, width = struct.unpack(">HH", data[start_of_frame + 5 : start_of_frame + 9])
    assert (width, height) == (1024, 768)


def test_png_decodes_to_the_requested_size() -> None:
    data = solid_png(13, 7)

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (13, 7)
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    rows = zlib.decompress(data[idat + 4 : idat + 4 + length])
    assert len(rows) == 7 * (1 + 2)  # filter byte plus ceil(13 / 8) bytes per row


async def test_files_route_serves_images_and_404s_nonsense(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    png = await http.get(f"{sims.fal_url}/_sim/files/any-20x10.png")
    jpeg = await http.get(f"{sims.fal_url}/_sim/files/plain.jpg")
    nonsense = await http.get(f"{sims.fal_url}/_sim/files/x.gif")

    assert png.content == solid_png(20, 10)
    assert jpeg.content == solid_jpeg(64, 64)
    assert nonsense.status_code == 404


async def test_file_faults_error_gone_slow_and_expired_signed_urls(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    url = f"{sims.krea_url}/_sim/files/out-20x10.png"
    await configure(http, sims, "krea", file_error_next=2, file_error_status=502)
    answers = [(await http.get(url)).status_code for _ in range(3)]
    assert answers == [502, 502, 200]
    assert (await stats(http, sims, "krea"))["file_errors"] == 2

    await configure(http, sims, "krea", files_gone=True)
    assert (await http.get(url)).status_code == 404

    await configure(http, sims, "krea", files_gone=False, file_slow_seconds=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.stream("GET", url) as slow:
        assert slow.status_code == 200  # the headers come at once, the body late
        headers_after = loop.time() - started
        body = await slow.aread()
    assert body == solid_png(20, 10)
    assert headers_after < 0.5 <= loop.time() - started

    past = f"{url}?Expires=1000&Signature=abc"
    future = f"{url}?Expires=99999999999&Signature=abc"
    await configure(http, sims, "krea", file_slow_seconds=0)
    assert (await http.get(past)).status_code == 403
    assert (await http.get(future)).content == solid_png(20, 10)


def test_cli_defaults() -> None:
    args = parse_args([])

    assert (args.host, args.krea_port, args.fal_port, args.scenario_port) == (
        "127.0.0.1",
        9101,
        9102,
        9103,
    )
    assert (args.queue_seconds, args.run_seconds) == (0.2, 0.5)


async def test_cli_serves_until_interrupted(http: httpx.AsyncClient) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "--krea-port=0",
        "--fal-port=0",
        "--scenario-port=0",
        "--queue-seconds=0",
        "--run-seconds=0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        banner: list[str] = []
        while not banner or banner[-1] != "Ctrl-C to stop.":
            line = await asyncio.wait_for(process.stdout.readline(), DEADLINE_SECONDS)
            assert line, "simulators exited before printing their URLs"
            banner.append(line.decode().strip())
        krea_url = banner[0].split()[1]
        token = banner[0].split("token=")[1]

        submitted = await http.post(
            f"{krea_url}/generate/image/bfl/flux-1-dev",
            json={"prompt": "cli"},
            headers={"Authorization": f"Bearer {token}"},
        )
        job = await http.get(
            f"{krea_url}/jobs/{submitted.json()['job_id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert job.json()["status"] == "completed"
        assert any(line.startswith("scenario") and "/v1" in line for line in banner)

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), DEADLINE_SECONDS) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_lowering_slow_seconds_lets_the_held_submits_go_and_a_departed_client_s_never_runs(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    """A delay follows the setting in force: lowering it answers the requests held so far.
    A submit whose client left during the delay is never handled: no job, no webhook."""
    api = ProviderApi(provider, sims, http)
    await configure(http, sims, provider, slow_seconds=3600)
    with pytest.raises(TimeoutError):  # the client gives up and closes its connection
        await asyncio.wait_for(api.submit("a harbour #left"), 0.3)
    await stats_when(http, sims, provider, abandoned_requests=1, in_flight_requests=0)
    kept = asyncio.create_task(api.submit("a harbour #kept"))
    await stats_when(http, sims, provider, in_flight_requests=1)

    await configure(http, sims, provider, slow_seconds=0)
    submitted = await asyncio.wait_for(kept, DEADLINE_SECONDS)

    assert submitted.status_code == 200, submitted.text
    jobs = (await http.get(f"{sims.control_url(provider)}/jobs")).json()["jobs"]
    assert [job["id"] for job in jobs] == [api.job_id(submitted)]
    counts = await stats(http, sims, provider)
    assert (counts["submits"], counts["jobs_created"], counts["abandoned_requests"]) == (1, 1, 1)


async def test_lowering_file_slow_seconds_sends_the_held_body(
    sims: RunningSimulators, http: httpx.AsyncClient
) -> None:
    url = f"{sims.krea_url}/_sim/files/out-20x10.png"
    await configure(http, sims, "krea", file_slow_seconds=3600)
    async with http.stream("GET", url) as held:
        assert held.status_code == 200  # the headers at once; the body waits on the setting
        await configure(http, sims, "krea", file_slow_seconds=0)
        body = await asyncio.wait_for(held.aread(), DEADLINE_SECONDS)
    assert body == solid_png(20, 10)


@pytest.mark.parametrize("provider", ["krea", "fal", "scenario"])
async def test_slow_fault_delays_api_answers_but_not_controls(
    sims: RunningSimulators, http: httpx.AsyncClient, provider: str
) -> None:
    await configure(http, sims, provider, slow_seconds=600)
    api_root = sims.scenario_url if provider == "scenario" else sims.roots[provider]

    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"{api_root}/jobs/some-id", timeout=0.2)
    control = await http.get(f"{sims.control_url(provider)}/stats")
    # Reset ends the pending delay, so the stalled request does not hold the server.
    await http.post(f"{sims.control_url(provider)}/reset")

    assert control.status_code == 200
