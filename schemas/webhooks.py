"""Client webhook deliveries and their attempts, as `GET /v1/jobs/{id}/webhooks` returns them."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from schemas.common import Timestamp


class WebhookAttempt(BaseModel):
    attempt: int
    started_at: Timestamp
    duration_ms: float | None
    status_code: int | None
    error: str | None


class WebhookDelivery(BaseModel):
    """One message (a status change of the job) to the job's webhook_url; `webhook_id` is the
    Standard Webhooks `webhook-id`, the same on every attempt."""

    webhook_id: str
    event_id: int
    type: str
    url: str
    state: Literal["pending", "delivered", "failed", "stopped"]
    attempts: list[WebhookAttempt]
    next_attempt_at: Timestamp | None
    last_error: str | None
    created_at: Timestamp
    finished_at: Timestamp | None


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDelivery]


class WebhookRecover(BaseModel):
    """`POST /v1/webhooks/recover`: every delivery that ended `failed` at or after `since` (an
    RFC 3339 time with its offset) is attempted once more."""

    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime

    @field_validator("since", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        """RFC 3339 text only: not the number of seconds pydantic would otherwise take."""
        if not isinstance(value, str):
            raise ValueError("must be an RFC 3339 time, like 2026-12-01T10:00:00Z")
        return value


class WebhookRecovered(BaseModel):
    """How many deliveries were requeued (each keeps its webhook-id and body)."""

    requeued: int
