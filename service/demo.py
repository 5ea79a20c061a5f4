"""`make run`: the service on a fresh machine with nothing configured.

Starts the embedded PostgreSQL (unless DATABASE_URL is set), applies migrations, starts the
built-in provider simulators for every provider that has no credentials and points the service
at them, serves the API with a bearer token (API_TOKENS, or one generated once and kept under
SERVICE_DATA_DIR), creates one demo job per simulated provider (so the operator page shows
something), and prints the operator page's URL, the token and one curl per provider.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson
from aiohttp import web
from pydantic import SecretStr

from service import tracing
from service.config import Settings
from service.logs import get_logger
from service.web.app import build_app

if TYPE_CHECKING:
    from simulators import RunningSimulators


def _kept_secret(data_dir: Path, name: str, make: Callable[[], str]) -> str:
    """A value generated on first run and reused afterwards, so printed commands keep working."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def demo_token(data_dir: Path) -> str:
    return _kept_secret(data_dir, "api-token", lambda: "demo-" + secrets.token_urlsafe(24))


def demo_webhook_secret(data_dir: Path) -> str:
    return _kept_secret(
        data_dir,
        "client-webhook-secret",
        lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )


EXAMPLES = {
    "krea": ("bfl/flux-1-dev", {"prompt": "a lighthouse at dawn"}),
    "fal": ("fal-ai/flux/krea", {"prompt": "a lighthouse at dawn"}),
    "scenario": ("model_flux-krea-dev", {"prompt": "a lighthouse at dawn"}),
}


async def create_demo_jobs(url: str, token: str, providers: list[str]) -> list[str]:
    """One job per provider through the API, as a client would, so the operator page has
    something to show. Only for simulated providers: a real one would bill its account."""
    job_ids = []
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        for provider in providers:
            model, example = EXAMPLES[provider]
            body = {"provider": provider, "model": model, "input": example,
                    "metadata": {"demo": True, "order": f"demo-{provider}"}}  # fmt: skip
            response = await client.post("/v1/jobs", json=body)
            response.raise_for_status()
            job_ids.append(response.json()["id"])
    return job_ids


def banner(
    settings: Settings,
    token: str,
    *,
    simulated: dict[str, str],
    webhook_secret: str,
    demo_jobs: Sequence[str] = (),
) -> str:
    url = settings.base_url
    auth = f"-H 'Authorization: Bearer {token}'"
    lines = [
        "",
        f"  Operator page: {url}/  (asks for the API token below)",
        f"  Image jobs service is running at {url}",
        f"  API token: {token}",
        "",
    ]
    if demo_jobs:
        lines += [f"  Demo jobs, one per simulated provider: {', '.join(demo_jobs)}", ""]
    for provider, (model, example) in EXAMPLES.items():
        where = f"simulator at {simulated[provider]}" if provider in simulated else "the real API"
        body = orjson.dumps({"provider": provider, "model": model, "input": example}).decode()
        lines += [
            f"  {provider} ({where}):",
            f"    curl -s -X POST {url}/v1/jobs {auth} -H 'Content-Type: application/json' \\",
            f"      -d '{body}'",
            "",
        ]
    lines += [
        f"  Follow a job live:  curl -N '{url}/v1/events/stream?job_id=<id>' {auth}",
        f"  Its history:   curl -s {url}/v1/jobs/<id>/events {auth}",
        f"  Its image:     curl -s {url}/v1/jobs/<id>/outputs/0 {auth} -o output-0",
        f"  Outputs are archived in {settings.output_store}",
        f"  Client webhooks are signed with: {webhook_secret}",
        f"  List jobs:     curl -s {url}/v1/jobs {auth}",
        f"  Health:        curl -s {url}/readyz",
        "",
        "  Ctrl-C stops it.",
        "",
    ]
    return "\n".join(lines)


async def start_demo_simulators(
    settings: Settings,
) -> tuple[Settings, RunningSimulators | None, dict[str, str]]:
    """Simulators for the providers that have no credentials, and settings pointing at them."""
    missing = [
        name
        for name, configured in (
            ("krea", settings.krea_api_token is not None),
            ("fal", settings.fal_key is not None),
            (
                "scenario",
                settings.scenario_api_key is not None and settings.scenario_api_secret is not None,
            ),
        )
        if not configured
    ]
    if not missing:
        return settings, None, {}
    # The simulators live beside the service in the repository, not in its wheel.
    try:
        from simulators import SimulatorConfig, start_simulators
    except ModuleNotFoundError as exc:
        if exc.name != "simulators":
            raise
        raise SystemExit(
            f"the demo simulates {', '.join(missing)} (no credentials configured) and so needs "
            "a source checkout (make run): the `simulators` package is not importable"
        ) from exc
    sims = await start_simulators(config=SimulatorConfig(queue_seconds=1.0, run_seconds=2.0))
    # The simulators serve their outputs on 127.0.0.1: the archiver may fetch from there.
    update: dict[str, object] = {"output_fetch_allow_private": True}
    urls: dict[str, str] = {}
    if "krea" in missing:
        update |= {"krea_api_url": sims.krea_url, "krea_api_token": SecretStr(sims.krea_token)}
        urls["krea"] = sims.krea_url
    if "fal" in missing:
        update |= {
            "fal_queue_url": sims.fal_url,
            "fal_key": SecretStr(sims.fal_key),
            "fal_jwks_url": sims.fal_jwks_url,
        }
        urls["fal"] = sims.fal_url
    if "scenario" in missing:
        update |= {
            "scenario_api_url": sims.scenario_url,
            "scenario_api_key": SecretStr(sims.scenario_api_key),
            "scenario_api_secret": SecretStr(sims.scenario_api_secret),
        }
        urls["scenario"] = sims.scenario_url
    return settings.model_copy(update=update), sims, urls


async def run_demo(settings: Settings, *, dsn: str) -> None:
    token = (
        settings.api_tokens[0].get_secret_value()
        if settings.api_tokens
        else demo_token(settings.data_dir)
    )
    webhook_secret = (
        settings.client_webhook_secret.get_secret_value()
        if settings.client_webhook_secret
        else demo_webhook_secret(settings.data_dir)
    )
    settings = settings.model_copy(
        update={
            "api_tokens": (SecretStr(token),),
            "client_webhook_secret": SecretStr(webhook_secret),
            "client_webhook_allow_private": True,  # the demo's clients live on this machine
        }
    )
    settings, sims, simulated = await start_demo_simulators(settings)
    # After the simulators start, so that only the service is traced (OTEL_* variables set).
    traced = tracing.setup(settings)
    app = await build_app(settings, dsn=dsn)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    demo_jobs = await create_demo_jobs(settings.base_url, token, list(simulated))
    print(
        banner(
            settings, token, simulated=simulated, webhook_secret=webhook_secret,
            demo_jobs=demo_jobs,
        ),
        flush=True,
    )  # fmt: skip
    get_logger("service").info("service_started", url=settings.base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if sims is not None:
            await sims.close()
        if traced is not None:
            await asyncio.to_thread(traced.shutdown)
