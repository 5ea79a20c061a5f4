"""pytest plugin for a nested test run (`-p tests.security.secrets_ledger`): writes every secret
the run issues to the file named by SECRETS_LEDGER, one JSON object a line,
`{"kind": "...", "value": "..."}`, so that tests/security can look for them in the run's logs.

Recorded: every callback token minted (`new_callback_token`), every secret of every Settings an
app is created with (API tokens, provider credentials, CLIENT_WEBHOOK_SECRET) and the forms they
are sent in (Scenario's Basic credentials), the simulators' credentials, every client webhook
secret and its raw key and every `webhook-signature` made with it (standardwebhooks.Webhook), every
fal webhook signature and every signed Scenario asset URL the simulators produce.

The wrapping happens at import time, before the tests' modules are imported. A module that did
`from x import f` keeps its own reference to `f`: every loaded module holding the original is
patched too, and modules imported later get the wrapper from `x` itself.
"""

from __future__ import annotations

import base64
import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic import SecretStr
from standardwebhooks import Webhook

import service.callback_tokens
import service.web.app
import service.workers.runner  # holds `new_callback_token` by its own name: patched too
import simulators
from service.config import Settings
from simulators.fal import FalSimulator
from simulators.scenario import ScenarioSimulator
from tests.security.scan import LEDGER_ENV

_lock = threading.Lock()


def record(kind: str, value: str | bytes | None) -> None:
    """Appends one secret to the ledger (each line flushed: a crashed run keeps what it had)."""
    path = os.environ.get(LEDGER_ENV)
    if not path or not value:
        return
    if isinstance(value, bytes):
        record(f"{kind}_hex", value.hex())
        record(f"{kind}_base64", base64.b64encode(value).decode())
        if value.isascii() and value.decode().isprintable():
            record(kind, value.decode())
        return
    line = orjson.dumps({"kind": kind, "value": value}) + b"\n"
    with _lock, open(path, "ab") as ledger:
        ledger.write(line)


def _patch_everywhere(module: Any, name: str, wrapper: Callable[..., Any]) -> None:
    """Replaces `module.name` and every loaded module's own reference to the same object."""
    original = getattr(module, name)
    for loaded in list(sys.modules.values()):
        try:
            if getattr(loaded, name, None) is original:
                setattr(loaded, name, wrapper)
        except Exception:  # noqa: S112 - odd modules (lazy proxies) are not ours to patch
            continue
    setattr(module, name, wrapper)


def record_settings(settings: Settings) -> None:
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        values = value if isinstance(value, tuple | list) else (value,)
        for item in values:
            if not isinstance(item, SecretStr):
                continue
            secret = item.get_secret_value()
            if name in ("database_url", "database_listen_url"):  # DSNs: their password
                record("database_password", urlsplit(secret).password)
                continue
            record(name, secret)
    if settings.scenario_api_key is not None and settings.scenario_api_secret is not None:
        pair = f"{settings.scenario_api_key.get_secret_value()}:"
        pair += settings.scenario_api_secret.get_secret_value()
        record("scenario_basic_credentials", base64.b64encode(pair.encode()).decode())


def _install() -> None:
    minted = service.callback_tokens.new_callback_token

    @functools.wraps(minted)
    def new_callback_token() -> str:
        token = minted()
        record("callback_token", token)
        return token

    _patch_everywhere(service.callback_tokens, "new_callback_token", new_callback_token)

    create_app = service.web.app.create_app

    @functools.wraps(create_app)
    def recording_create_app(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        record_settings(settings)
        return create_app(settings, *args, **kwargs)

    _patch_everywhere(service.web.app, "create_app", recording_create_app)

    start_simulators = simulators.start_simulators

    @functools.wraps(start_simulators)
    async def recording_start_simulators(*args: Any, **kwargs: Any) -> Any:
        sims = await start_simulators(*args, **kwargs)
        for kind in ("krea_token", "fal_key", "scenario_api_key", "scenario_api_secret"):
            record(f"simulator_{kind}", getattr(sims, kind))
        record("simulator_scenario_url_secret", sims.scenario._url_secret)
        return sims

    _patch_everywhere(simulators, "start_simulators", recording_start_simulators)

    webhook_init = Webhook.__init__
    webhook_sign = Webhook.sign

    def init(self: Webhook, whsecret: str | bytes) -> None:
        webhook_init(self, whsecret)
        if isinstance(whsecret, str):
            record("client_webhook_secret", whsecret)
            record("client_webhook_secret_base64", whsecret.removeprefix("whsec_"))
        record("client_webhook_key_raw", self._whsecret)

    def sign(self: Webhook, *args: Any, **kwargs: Any) -> str:
        signature: str = webhook_sign(self, *args, **kwargs)
        record("client_webhook_signature", signature)
        for part in signature.split():
            record("client_webhook_signature_base64", part.partition(",")[2])
        return signature

    Webhook.__init__ = init  # type: ignore[method-assign]
    Webhook.sign = sign  # type: ignore[method-assign]

    render_callback = FalSimulator.render_callback

    def fal_render_callback(self: FalSimulator, job: Any) -> tuple[bytes, dict[str, str]]:
        body, headers = render_callback(self, job)
        record("fal_webhook_signature", headers["X-Fal-Webhook-Signature"])
        return body, headers

    FalSimulator.render_callback = fal_render_callback  # type: ignore[method-assign]

    asset_json = ScenarioSimulator.asset_json

    def scenario_asset_json(self: ScenarioSimulator, job: Any, index: int) -> dict[str, Any]:
        asset: dict[str, Any] = asset_json(self, job, index)
        for signature in parse_qs(urlsplit(asset["url"]).query).get("Signature", []):
            record("scenario_asset_url_signature", signature)
        return asset

    ScenarioSimulator.asset_json = scenario_asset_json  # type: ignore[method-assign]


_install()
