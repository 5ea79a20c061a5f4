"""`make run`: the service on a fresh machine with nothing configured.

Starts the embedded PostgreSQL (unless DATABASE_URL is set), applies migrations, serves the API
with a bearer token (API_TOKENS, or one generated once and kept under SERVICE_DATA_DIR), and
prints the URL, the token and an example curl.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from service.config import Settings
from service.logs import get_logger
from service.web.app import build_app


def demo_token(data_dir: Path) -> str:
    """A token generated on first run and reused afterwards, so printed curls keep working."""
    path = data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = "demo-" + secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def banner(settings: Settings, token: str) -> str:
    url = settings.base_url
    return f"""
  Image jobs service is running at {url}
  API token: {token}

  Create a job:
    curl -s -X POST {url}/v1/jobs \\
      -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
      -d '{{"provider": "fal", "model": "fal-ai/flux/krea", "input": {{"prompt": "a lighthouse at dawn"}}}}'

  Follow it:   curl -s {url}/v1/jobs/<id>/events -H 'Authorization: Bearer {token}'
  List jobs:   curl -s {url}/v1/jobs -H 'Authorization: Bearer {token}'
  Health:      curl -s {url}/readyz

  Ctrl-C stops it.
"""


async def run_demo(settings: Settings, *, dsn: str) -> None:
    token = (
        settings.api_tokens[0].get_secret_value()
        if settings.api_tokens
        else demo_token(settings.data_dir)
    )
    settings = settings.model_copy(update={"api_tokens": (SecretStr(token),)})
    app = await build_app(settings, dsn=dsn)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    print(banner(settings, token), flush=True)
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
