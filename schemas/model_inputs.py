"""Each supported model's input schema, from the providers' own model pages (../shared/seeds).

Types, required fields, ranges, enums and multiples are checked before anything is sent.
Adding a model is one declaration: a pydantic model decorated with `@model_input(provider, id)`.
Unknown fields are refused (a typo must not silently become a default), types are strict
(`"5"` is not a number), and the request sent to the provider is the validated model dumped with
its documented defaults filled in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl

from schemas.jobs import Provider

Number = float  # strict: ints are accepted as numbers, strings and booleans are not


def _whole_float_as_int(value: object) -> object:
    """JSON Schema's integer includes 1.0 (a client's JSON library may write a whole number
    so): taken as 1. Any other float, a string or a boolean is still refused (strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Last in an integer parameter's Annotated: a whole float counts, as JSON Schema's `integer`.
WHOLE = BeforeValidator(_whole_float_as_int)


class ModelInput(BaseModel):
    """Base of every model's input: strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def provider_request(self) -> dict[str, Any]:
        """The body sent to the provider: what the client gave plus documented defaults."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class ModelSpec:
    provider: Provider
    model: str
    input_model: type[ModelInput]


MODELS: dict[tuple[str, str], ModelSpec] = {}
M = TypeVar("M", bound=type[ModelInput])


def model_input(provider: Provider, model: str) -> Callable[[M], M]:
    """Registers an input schema for one provider model."""

    def register(cls: M) -> M:
        MODELS[(provider, model)] = ModelSpec(provider, model, cls)
        return cls

    return register


def models_of(provider: str) -> list[str]:
    return sorted(model for (p, model) in MODELS if p == provider)


# --- Krea (seed 003: POST /generate/image/bfl/flux-1-dev) -------------------------------------
# The seed (Krea's own page) spells the image fields imageUrl/styleImages/imageStyleRefs; the
# older reference text says image_url/style_images. The seed's spelling is taken.


class KreaStyle(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1)
    strength: Number | None = None


class KreaImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: HttpUrl
    strength: Number | None = None


@model_input("krea", "bfl/flux-1-dev")
class KreaFlux1Dev(ModelInput):
    prompt: str = Field(min_length=1, max_length=1800)
    width: Annotated[int, Field(ge=512, le=2368), WHOLE] = 1024
    height: Annotated[int, Field(ge=512, le=2368), WHOLE] = 1024
    steps: Annotated[int, Field(ge=1, le=100), WHOLE] = 25
    guidance_scale_flux: Annotated[Number, Field(ge=0, le=24)] = 3
    seed: Annotated[int | None, WHOLE] = None
    strength: Number | None = None
    imageUrl: HttpUrl | None = None
    styleImages: list[KreaImageRef] | None = None
    imageStyleRefs: list[KreaImageRef] | None = None
    styles: list[KreaStyle] | None = None
    relaxedModeAccess: bool | None = None


# --- fal (seed 004: fal-ai/flux/krea) ---------------------------------------------------------


class FalImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    width: Annotated[int, Field(ge=1, le=14142), WHOLE]
    height: Annotated[int, Field(ge=1, le=14142), WHOLE]


FalImageSizeName = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]


@model_input("fal", "fal-ai/flux/krea")
class FalFluxKrea(ModelInput):
    prompt: str = Field(min_length=1)
    image_size: FalImageSizeName | FalImageSize = "landscape_4_3"
    num_inference_steps: Annotated[int, Field(ge=1, le=50), WHOLE] = 28
    seed: Annotated[int | None, WHOLE] = None
    guidance_scale: Annotated[Number, Field(ge=1, le=20)] = 4.5
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1, le=4), WHOLE] = 1
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    acceleration: Literal["none", "regular", "high"] = "none"


# --- Scenario (seeds 000, 001, 002) -----------------------------------------------------------
# The pages give types and defaults but few ranges; where they state none, only the type and
# sign are checked (Scenario validates the rest and its 4xx answer is kept as the job's error).

AspectRatio = Annotated[str, Field(pattern=r"^(\d{1,2}:\d{1,2}|auto)$")]
AssetId = Annotated[str, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=1, le=16), WHOLE]


@model_input("scenario", "model_flux-krea-dev")
class ScenarioFluxKreaDev(ModelInput):
    prompt: str | None = Field(default=None, min_length=1)
    aspectRatio: AspectRatio = "4:3"
    image: AssetId | None = None
    promptStrength: Annotated[Number, Field(ge=0, le=1)] = 0.8
    numOutputs: Count = 1
    steps: Annotated[int, Field(ge=1), WHOLE] = 28
    guidance: Annotated[Number, Field(ge=0)] = 3
    megapixels: str = "1"
    seed: Annotated[int | None, WHOLE] = None


@model_input("scenario", "model_flux-kontext-editing")
class ScenarioFluxKontextEditing(ModelInput):
    loras: list[str] | None = None
    lorasScale: list[Number] | None = None
    referenceImages: list[AssetId] = Field(min_length=1)
    prompt: str = Field(min_length=1)
    numOutputs: Count = 1
    aspectRatio: AspectRatio = "auto"
    quality: str = "high"
    guidanceScale: Annotated[Number, Field(ge=1, le=10)] = 3.5
    seed: Annotated[int | None, WHOLE] = None


@model_input("scenario", "model_bfl-flux-2-klein-4b-base")
class ScenarioFlux2Klein4bBase(ModelInput):
    modelId: str | None = None
    loras: list[str] | None = None
    lorasScale: list[Number] | None = None
    prompt: str = Field(min_length=1)
    referenceImages: list[AssetId] | None = None
    numOutputs: Count = 1
    numInferenceSteps: Annotated[int, Field(ge=1), WHOLE] = 28
    width: Annotated[int | None, Field(ge=16, multiple_of=16), WHOLE] = None
    height: Annotated[int | None, Field(ge=16, multiple_of=16), WHOLE] = None
    guidance: Annotated[Number, Field(ge=0)] = 4
    seed: Annotated[int | None, WHOLE] = None
