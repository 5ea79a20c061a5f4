"""A simulator's settings and injected faults, changeable at run time, and the state around them:
the config to go back to on reset, the fault counters being used up, the seeded random draws."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class SimulatorConfig(BaseModel):
    """Timing, credentials and injected faults of one simulator; changeable at run time."""

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

    # Credentials the simulators accept; anything else gets 401. Fake by design: they only
    # ever unlock a local simulator.
    krea_token: str = "sim-krea-token"  # noqa: S105
    fal_key: str = "sim-fal-key"
    fal_user_id: str = "sim-user"
    scenario_api_key: str = "sim-scenario-key"
    scenario_api_secret: str = "sim-scenario-secret"  # noqa: S105

    # Job outcome faults.
    fail_rate: float = Field(0.0, ge=0, le=1)

    # Submit faults: counters are consumed one per submit request.
    rate_limit_next: int = Field(0, ge=0)
    retry_after_seconds: float = Field(1.0, ge=0)
    server_error_next: int = Field(0, ge=0)
    server_error_status: int = Field(503, ge=500, le=599)
    error_after_submit_next: int = Field(0, ge=0)
    error_after_submit_mode: Literal["status", "drop"] = "status"
    error_after_submit_status: int = Field(500, ge=500, le=599)
    # Poll faults: consumed one per status / result / list / asset request.
    poll_error_next: int = Field(0, ge=0)
    slow_seconds: float = Field(0.0, ge=0, description="delay before answering any API request")

    # Webhook faults.
    callback_duplicates: int = Field(0, ge=0)
    callback_drop_rate: float = Field(0.0, ge=0, le=1)
    callback_delay_seconds: float = Field(0.0, ge=0)
    callback_early: bool = False
    callback_on_cancel: bool = Field(
        True, description="send the terminal webhook of a cancelled job (fal: an ERROR one)"
    )
    callback_bad_signature: bool = False
    callback_timestamp_skew_seconds: float = 0.0

    # Webhook delivery policy; None means the provider's documented policy (fal 10, Krea 1).
    callback_max_attempts: int | None = Field(None, ge=1)
    callback_retry_base_seconds: float = Field(0.2, ge=0)
    callback_retry_max_seconds: float = Field(5.0, ge=0)
    callback_timeout_seconds: float = Field(15.0, gt=0)

    # fal validates input when the runner starts (so a bad body is an ERROR result/webhook);
    # set this to answer 422 at submit instead.
    fal_validate_on_submit: bool = False


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
