"""Local simulators of the Krea, fal and Scenario APIs, with injectable faults.

They let the service, its tests and the demo run without network access or provider accounts.
Each factory returns a plain aiohttp application; `start_simulators` serves all three in-process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger

from simulators.base import ProviderSimulator, get_simulator
from simulators.config import SimulatorConfig
from simulators.fal import FalConfig, FalSimulator, create_fal_app
from simulators.faults import CONTENT_MARKER, DROP_CALLBACK_MARKER, EARLY_MARKER, FAIL_MARKER
from simulators.krea import KreaConfig, KreaSimulator, create_krea_app
from simulators.scenario import ScenarioConfig, ScenarioSimulator, create_scenario_app

__all__ = [
    "CONTENT_MARKER",
    "DROP_CALLBACK_MARKER",
    "EARLY_MARKER",
    "FAIL_MARKER",
    "FalConfig",
    "FalSimulator",
    "KreaConfig",
    "KreaSimulator",
    "ProviderSimulator",
    "RunningSimulators",
    "ScenarioConfig",
    "ScenarioSimulator",
    "SimulatorConfig",
    "create_fal_app",
    "create_krea_app",
    "create_scenario_app",
    "get_simulator",
    "start_simulators",
]

PROVIDERS = ("krea", "fal", "scenario")


@dataclass
class RunningSimulators:
    """The three simulators served on loopback ports: their URLs, credentials and objects."""

    krea_url: str
    fal_url: str
    scenario_url: str  # includes the `/v1` prefix, as SCENARIO_BASE_URL expects
    fal_jwks_url: str
    krea_token: str
    fal_key: str
    fal_user_id: str
    scenario_api_key: str
    scenario_api_secret: str
    krea: KreaSimulator
    fal: FalSimulator
    scenario: ScenarioSimulator
    roots: dict[str, str] = field(default_factory=dict)
    _runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    def control_url(self, provider: str) -> str:
        """Base of a simulator's control API, e.g. `{root}/_sim` (config, stats, jobs, reset)."""
        return f"{self.roots[provider]}/_sim"

    def simulator(self, provider: str) -> ProviderSimulator[Any]:
        """The in-process simulator object behind a provider name, for direct inspection."""
        sims: dict[str, ProviderSimulator[Any]] = {
            "krea": self.krea,
            "fal": self.fal,
            "scenario": self.scenario,
        }
        return sims[provider]

    def reset(self) -> None:
        """Reset all three simulators (jobs, stats, faults) without an HTTP round trip."""
        for provider in PROVIDERS:
            self.simulator(provider).reset()

    async def close(self) -> None:
        """Stop serving; pending webhooks are abandoned."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> RunningSimulators:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Method, path and status only: a query string can carry a callback URL with its token
    (fal's `fal_webhook`), which has no place in a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )


async def _serve(
    app: web.Application, host: str, port: int, *, access_log: bool
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(
        app,
        access_log=access_logger if access_log else None,
        access_log_class=PathOnlyAccessLogger,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}"


async def start_simulators(
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    config: SimulatorConfig | None = None,
    access_log: bool = False,
) -> RunningSimulators:
    """Serve the three simulators in this event loop, each on its own port.

    `ports` maps "krea" / "fal" / "scenario" to a port (missing or 0: pick a free one).
    Each simulator gets its own copy of `config`, so faults set on one never affect another,
    with its provider's defaults (credentials) for the rest (see `SimulatorConfig.adopt`).
    """
    ports = ports or {}
    krea = KreaSimulator(config)
    fal = FalSimulator(config)
    scenario = ScenarioSimulator(config)
    sims: dict[str, ProviderSimulator[Any]] = {"krea": krea, "fal": fal, "scenario": scenario}
    runners: list[web.AppRunner] = []
    roots: dict[str, str] = {}
    try:
        for provider in PROVIDERS:
            runner, root = await _serve(
                sims[provider].build_app(),
                host,
                ports.get(provider, 0),
                access_log=access_log,
            )
            runners.append(runner)
            roots[provider] = root
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return RunningSimulators(
        krea_url=roots["krea"],
        fal_url=roots["fal"],
        scenario_url=f"{roots['scenario']}/v1",
        fal_jwks_url=f"{roots['fal']}/.well-known/jwks.json",
        krea_token=krea.config.krea_token,
        fal_key=fal.config.fal_key,
        fal_user_id=fal.config.fal_user_id,
        scenario_api_key=scenario.config.scenario_api_key,
        scenario_api_secret=scenario.config.scenario_api_secret,
        krea=krea,
        fal=fal,
        scenario=scenario,
        roots=roots,
        _runners=runners,
    )
