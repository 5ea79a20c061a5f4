"""A simulator's settings and injected faults, changeable at run time, and the state around them:
the config to go back to on reset, the fault counters being used up, the seeded random draws.

`SimulatorConfig` holds what every simulator understands; each provider's module extends it
with its own settings (credentials, fal's signing faults): `KreaConfig`, `FalConfig`,
`ScenarioConfig`. Keys stay flat, so `POST /_sim/config` takes `{"queue_seconds": 1,
"krea_token": "..."}` as it always has; a simulator refuses another provider's keys.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from simulators.jobs import FailReason


class SimulatorConfig(BaseModel):
    """Timing and injected faults every simulator understands; changeable at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Timing: a job spends queue_seconds queued, then run_seconds running, then ends.
    queue_seconds: float = Field(0.2, ge=0)
    run_seconds: float = Field(0.5, ge=0)
    verbose_statuses: bool = Field(
        False, description="walk through every documented intermediate status (Krea, Scenario)"
    )
    public_base_url: str | None = Field(
        None, description="base of URLs the simulator hands out; default: the request's host"
    )
    random_seed: int | None = Field(None, description="seed for fail_rate / drop_rate draws")

    # Job outcome faults.
    fail_rate: float = Field(0.0, ge=0, le=1)
    fail_reason: FailReason = Field(
        "error",
        description="how a failing job (fail_rate, `[fail]`) fails: a provider-side error, or "
        "a content (safety) refusal; the `[content]` marker forces the latter for one job",
    )

    # Submit faults: counters are consumed one per submit request.
    rate_limit_next: int = Field(0, ge=0)
    retry_after_seconds: float = Field(1.0, ge=0)
    server_error_next: int = Field(0, ge=0)
    server_error_status: int = Field(503, ge=500, le=599)
    error_after_submit_next: int = Field(0, ge=0)
    error_after_submit_mode: Literal["status", "drop"] = "status"
    error_after_submit_status: int = Field(500, ge=500, le=599)
    # A provider that fails every submit, unlike the counters above (which strike first):
    # "refuse" answers its documented client-error refusal, "unavailable" server_error_status.
    submit_mode: Literal["accept", "refuse", "unavailable"] = "accept"
    # Poll faults: consumed one per status / result / list / asset request.
    poll_error_next: int = Field(0, ge=0)
    slow_seconds: float = Field(
        0.0,
        ge=0,
        description="delay before handling any API request (changing it moves the delays in "
        "progress; a request whose client leaves meanwhile is never handled)",
    )
    # A provider gone quiet: see `simulators.silence`.
    silent: bool = Field(
        False,
        description="take submits and cancels, but hold status / result / list requests "
        "unanswered and keep back the webhooks of jobs created meanwhile",
    )
    # Load: an API request arriving while this many are being handled is answered 429.
    max_concurrent_requests: int | None = Field(None, ge=0)

    # Output file faults: consumed one per file request (`/_sim/files/...`).
    file_error_next: int = Field(0, ge=0)
    file_error_status: int = Field(500, ge=400, le=599)
    file_slow_seconds: float = Field(
        0.0,
        ge=0,
        description="delay between the headers and the body of every output file (changing "
        "it moves the delays in progress)",
    )
    files_gone: bool = Field(False, description="outputs deleted at the provider: files answer 404")

    # Webhook faults (providers that send webhooks; fal adds its signing faults).
    callback_duplicates: int = Field(0, ge=0)
    callback_drop_rate: float = Field(0.0, ge=0, le=1)
    callback_delay_seconds: float = Field(0.0, ge=0)
    callback_early: bool = False
    callback_on_cancel: bool = Field(
        True, description="send the terminal webhook of a cancelled job (fal: an ERROR one)"
    )

    # Webhook delivery policy; None means the provider's documented policy (fal 10, Krea 1).
    callback_max_attempts: int | None = Field(None, ge=1)
    callback_retry_base_seconds: float = Field(0.2, ge=0)
    callback_retry_max_seconds: float = Field(5.0, ge=0)
    callback_timeout_seconds: float = Field(15.0, gt=0)

    @classmethod
    def adopt(cls, config: SimulatorConfig | None) -> Self:
        """This provider's config from a shared one: its common settings, this class's defaults
        for the rest (a config of this very class is copied whole)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config.model_copy()
        return cls.model_validate(config.model_dump(include=set(SimulatorConfig.model_fields)))


C = TypeVar("C", bound=SimulatorConfig)


class ConfigState(Generic[C]):
    """The config in force, the one the simulator was built with, and the random draws."""

    def __init__(self, initial: C) -> None:
        self._initial = initial.model_copy()
        self.current = initial.model_copy()
        self.rng = random.Random(self.current.random_seed)

    def update(self, patch: Mapping[str, Any]) -> C:
        """Merge `patch` into the config, validated as a whole (a bad patch changes nothing)."""
        merged = {**self.current.model_dump(), **patch}
        self.current = type(self.current).model_validate(merged)
        if "random_seed" in patch:
            self.rng.seed(self.current.random_seed)
        return self.current

    def reset(self) -> None:
        """Back to the config the simulator was built with, and its random sequence."""
        self.current = self._initial.model_copy()
        self.rng.seed(self.current.random_seed)

    def consume(self, counter: str) -> bool:
        """Take one unit of a `*_next` fault counter; True when one was left."""
        left = int(getattr(self.current, counter))
        if left <= 0:
            return False
        self.current = self.current.model_copy(update={counter: left - 1})
        return True

    def draw(self, rate: float) -> bool:
        """A random fault that strikes with probability `rate` (no draw at all when 0)."""
        return rate > 0 and self.rng.random() < rate
