"""What the providers send us (REFERENCE.md), as validated models.

Provider payloads are parsed tolerantly: unknown fields are ignored (providers add fields), but
the fields we act on must have the documented types, or the payload is refused as malformed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class ProviderPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProviderState(BaseModel):
    """What an adapter keeps of a job between calls, stored as the JSON of `jobs.provider_state`.

    The database merges an update into the stored object key by key (`||`), so `to_json` leaves
    out what is unset (None): an update names only what it changes. Unknown keys are ignored:
    rows written by earlier versions may carry keys no model reads any more."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- Krea -------------------------------------------------------------------------------------


class KreaResult(ProviderPayload):
    urls: list[str] = []
    error: Any = None


class KreaJob(ProviderPayload):
    """The job object: submit answer, GET /jobs/{id}, and the webhook body."""

    job_id: str = Field(min_length=1)
    status: str
    created_at: str | None = None
    completed_at: str | None = None
    result: KreaResult | None = None


class KreaSize(ProviderState):
    width: int | None = None
    height: int | None = None


class KreaState(ProviderState):
    """Krea answers with bare URLs: the size its outputs have is the one requested (stored as
    `{"request": {"width", "height"}}`)."""

    request: KreaSize = KreaSize()


class KreaJobList(ProviderPayload):
    """`GET /jobs`: newest first; `next_cursor` is the creation time to continue before."""

    items: list[KreaJob]
    next_cursor: str | None = None


# --- fal --------------------------------------------------------------------------------------


class FalSubmitted(ProviderPayload):
    request_id: str = Field(min_length=1)
    status: str | None = None
    response_url: str
    status_url: str
    cancel_url: str


class FalStatus(ProviderPayload):
    status: str
    queue_position: int | None = None
    error: Any = None
    error_type: str | None = None


class FalImage(ProviderPayload):
    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None


class FalImagesResult(ProviderPayload):
    images: list[FalImage] = []


class FalState(ProviderState):
    """The URLs fal's submit answer gave (never rebuilt from the app id), and fal's answer to
    our cancel: None until one is recorded."""

    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    cancel_accepted: bool | None = None


class FalWebhookOk(ProviderPayload):
    request_id: str = Field(min_length=1)
    status: Literal["OK"]
    # None when fal could not read the model's result as JSON (then `payload_error` says why).
    payload: FalImagesResult | None = None
    payload_error: str | None = None


class FalWebhookError(ProviderPayload):
    request_id: str = Field(min_length=1)
    status: Literal["ERROR"]
    error: str | None = None
    payload: Any = None  # the model's error body, kept as the provider's detail
    payload_error: str | None = None


FalWebhookVariant = Annotated[FalWebhookOk | FalWebhookError, Field(discriminator="status")]


class FalWebhook(RootModel[FalWebhookVariant]):
    """The webhook body: `status` tells the variant."""


class FalCancelAnswer(ProviderPayload):
    status: str


class Jwk(ProviderPayload):
    kty: str
    crv: str | None = None
    x: str | None = None
    kid: str | None = None


class Jwks(ProviderPayload):
    keys: list[Jwk]


# --- Scenario ---------------------------------------------------------------------------------


class ScenarioJobMetadata(ProviderPayload):
    assetIds: list[str] = []
    error: Any = None
    input: dict[str, Any] | None = None  # the generation's parameters, echoed back


class ScenarioJob(ProviderPayload):
    jobId: str = Field(min_length=1)
    status: str
    progress: float | None = None
    createdAt: str | None = None
    metadata: ScenarioJobMetadata = ScenarioJobMetadata()


class ScenarioJobEnvelope(ProviderPayload):
    job: ScenarioJob


class ScenarioJobList(ProviderPayload):
    """`GET /jobs`: newest first, paged by an opaque token."""

    jobs: list[ScenarioJob]
    nextPaginationToken: str | None = None


class ScenarioAsset(ProviderPayload):
    id: str
    url: str | None = None
    mimeType: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None


class ScenarioAssetEnvelope(ProviderPayload):
    asset: ScenarioAsset
