"""Builds the enabled providers' adapters from Settings: a provider without credentials is
disabled (jobs for it are refused with 422 provider_disabled)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from service.config import Settings
from service.providers.base import ProviderAdapter
from service.providers.fal import FalAdapter
from service.providers.fal_signature import FalWebhookVerifier
from service.providers.http import make_client
from service.providers.krea import KreaAdapter
from service.providers.scenario import ScenarioAdapter


@dataclass
class Providers:
    """The adapters of the enabled providers (and the clients they were given, closed with
    them)."""

    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()
        for client in self._clients:
            await client.aclose()


def build_providers(settings: Settings) -> Providers:
    providers = Providers()
    if settings.krea_api_token is not None:
        providers.adapters["krea"] = KreaAdapter(
            base_url=settings.krea_api_url, token=settings.krea_api_token.get_secret_value()
        )
    if settings.fal_key is not None:
        jwks_client = make_client(timeout=httpx.Timeout(10.0))
        providers._clients.append(jwks_client)
        providers.adapters["fal"] = FalAdapter(
            queue_url=settings.fal_queue_url,
            key=settings.fal_key.get_secret_value(),
            verifier=FalWebhookVerifier(jwks_url=settings.fal_jwks_url, client=jwks_client),
        )
    if settings.scenario_api_key is not None and settings.scenario_api_secret is not None:
        providers.adapters["scenario"] = ScenarioAdapter(
            base_url=settings.scenario_api_url,
            api_key=settings.scenario_api_key.get_secret_value(),
            api_secret=settings.scenario_api_secret.get_secret_value(),
        )
    return providers
