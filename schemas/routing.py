"""Routed models: one common input, translated to each provider's own parameters (no I/O).

A model served by several providers is asked for by its common name with `"provider": "auto"`
(CONTRACT.md, "Routing across providers"). Its `input` is a `RoutedInput`; `translate` turns it
into the input of one provider's model (`schemas.model_inputs.MODELS[(provider, model_id)]`) and
records in `Translation.adjustments` every parameter that provider cannot honour exactly.
Adding a provider to a routed model is one `ProviderMapping` subclass and one line in
`ROUTED_MODELS`.

Rules for FLUX.1 Krea [dev] (`flux-1-krea-dev`: fal `fal-ai/flux/krea`, seed 004; Scenario
`model_flux-krea-dev`, seed 000; same open weights, REFERENCE.md "The same model on two
providers"):

- A parameter the client leaves out is left out of every translation: each provider applies its
  own documented default (fal: `landscape_4_3` = 1024x768, 28 steps, guidance 4.5; Scenario:
  `4:3` at about 1 megapixel, 28 steps, guidance 3). A client who wants the same guidance on every
  provider sets it.
- Size. fal takes any `{width, height}` from 1 to 14142 per side (its `ImageSize` object, seed 004
  and `schemas.model_inputs.FalImageSize`; no multiple is documented), so fal honours every size
  the common schema admits, exactly. Scenario takes only an aspect ratio and an "approximate
  number of megapixels" (seed 000), so a size is mapped to the nearest Scenario option:
  first the nearest aspect ratio (smallest |ln(w/h) - ln(a/b)|), then, for that ratio, the
  nearest megapixel tier (smallest |ln(w*h) - ln(tier * 2**20)|); ties go to the option listed
  first. The size counts as exact only when it is that option's nominal size (the ratio at
  tier * 2**20 pixels, each side rounded: 1024x1024 for `1:1` at "1"); otherwise the choice is
  recorded as `{"size": {"asked": [w, h], "sent": {"aspectRatio", "megapixels"},
  "approximate_size": [w', h']}}`. A size is never a reason to refuse a provider: Scenario can
  express no pixel size at all, and refusing it would leave it only the size-less requests.
- Steps and guidance are not clamped: a value outside a provider's documented range makes that
  provider unservable (`Unservable`), so the route moves on to a provider that honours it
  exactly. Both providers take these in the same units, so a clamped value would silently be a
  different request, while skipping the provider costs nothing when another on the route can
  serve it; when none can, the API answers 422 before recording anything.
- `num_images` (1..4) and `seed` (0..2**31-1) are within what both providers accept: always exact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.jobs import PROVIDERS, Provider
from schemas.model_inputs import MODELS, WHOLE

DEFAULT_ROUTES = "flux-1-krea-dev=fal,scenario"
MEGAPIXEL = 1024 * 1024  # FLUX's "1 megapixel": 1024x1024 for 1:1

# The common schema's bounds: the union of the ranges the providers on the route document. Where
# a provider documents no maximum (Scenario's steps and guidance, seed 000), the bound is the
# largest maximum another provider documents: nothing larger is documented to work anywhere.
MAX_SIDE = 14142  # fal's ImageSize (schemas.model_inputs.FalImageSize); Scenario takes no pixels
MIN_STEPS, MAX_STEPS = 1, 50  # fal 1..50 (seed 004); Scenario >= 1, no maximum documented
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0  # fal 1..20 (seed 004); Scenario >= 0 (seed 000)
MAX_NUM_IMAGES = 4  # CONTRACT.md "Routing"; fal 1..4 (seed 004); Scenario numOutputs 1..16
MAX_SEED = 2**31 - 1  # Scenario documents 0..2147483647 for its FLUX models; fal any integer


class RoutedInput(BaseModel):
    """The common input of a routed model (`"provider": "auto"`): translated to each provider's
    own parameters. Parameters left out take each provider's own default."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prompt": "a lighthouse at dawn", "width": 1024, "height": 1024}],
            # width and height together (the model validator), as JSON Schema states it
            "allOf": [
                {
                    "if": {"properties": {one: {"type": "integer"}}, "required": [one]},
                    "then": {"properties": {other: {"type": "integer"}}, "required": [other]},
                }
                for one, other in (("width", "height"), ("height", "width"))
            ],
        },
    )

    prompt: str = Field(min_length=1, description="What to generate. Required.")
    width: Annotated[int, Field(ge=1, le=MAX_SIDE), WHOLE] | None = Field(
        default=None,
        description=(
            "Image width in pixels, given together with `height`. A provider that cannot produce "
            "this exact size (Scenario: aspect ratios at about one megapixel) gets the nearest "
            "it can: nearest aspect ratio, then nearest pixel count, recorded with the attempt "
            "as an adjustment. Left out: each provider's default size."
        ),
    )
    height: Annotated[int, Field(ge=1, le=MAX_SIDE), WHOLE] | None = Field(
        default=None, description="Image height in pixels, given together with `width`."
    )
    num_images: Annotated[int, Field(ge=1, le=MAX_NUM_IMAGES), WHOLE] | None = Field(
        default=None, description="Number of images, 1 to 4. Left out: 1."
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), WHOLE] | None = Field(
        default=None,
        description="Seed for reproducible results on one provider. Left out: random.",
    )
    steps: Annotated[int, Field(ge=MIN_STEPS, le=MAX_STEPS), WHOLE] | None = Field(
        default=None,
        description=(
            f"Inference steps, {MIN_STEPS} to {MAX_STEPS}. Providers whose own range does not "
            "include the value are skipped. Left out: each provider's default (28)."
        ),
    )
    guidance: Annotated[float, Field(ge=MIN_GUIDANCE, le=MAX_GUIDANCE)] | None = Field(
        default=None,
        description=(
            f"Guidance, {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g} (fal takes 1 to 20, Scenario 0 and "
            "up). Providers whose own range does not include the value are skipped. Left out: "
            "each provider's default (fal 4.5, Scenario 3)."
        ),
    )

    @model_validator(mode="after")
    def _width_and_height_together(self) -> Self:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together, or both left out")
        return self

    @property
    def size(self) -> tuple[int, int] | None:
        if self.width is None or self.height is None:
            return None
        return (self.width, self.height)


class Unservable(Exception):
    """A provider cannot serve a routed input at all; the message names the parameter."""

    def __init__(self, provider: str, parameter: str, reason: str) -> None:
        super().__init__(f"{provider} cannot serve {parameter}: {reason}")
        self.provider = provider
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True)
class Translation:
    """One provider's input for a routed request. `input` validates against
    `MODELS[(provider, model)].input_model`; `adjustments` names every parameter not honoured
    exactly, with what was asked and what was sent instead (empty when exact)."""

    provider: Provider
    model: str
    input: dict[str, Any]
    adjustments: dict[str, Any] = field(default_factory=dict)


def _check_range(
    provider: str,
    parameter: str,
    value: float | None,
    own_name: str,
    low: float | None,
    high: float | None,
    source: str,
) -> None:
    """Raises Unservable when `value` is outside the provider's documented [low, high]."""
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
        raise Unservable(
            provider,
            parameter,
            f"{parameter}={value:g} but its {own_name} takes {bounds} ({source})",
        )


class ProviderMapping(ABC):
    """How one provider's model takes a routed model's common input: one subclass per provider."""

    provider: ClassVar[Provider]
    model: ClassVar[str]

    @abstractmethod
    def map(self, common: RoutedInput) -> tuple[dict[str, Any], dict[str, Any]]:
        """The provider's input and the adjustments; raises Unservable."""


# --- fal: fal-ai/flux/krea (seed 004) ---------------------------------------------------------


class FalFluxKreaMapping(ProviderMapping):
    """fal's parameters (seed 004): `image_size` a named size or `{width, height}`,
    `num_inference_steps` 1..50, `guidance_scale` 1..20, `num_images` 1..4, `seed` an integer.

    A size is always sent as the custom `{width, height}` object (1..14142 per side, fal's
    `ImageSize` as in `schemas.model_inputs.FalImageSize`), which fal honours exactly; a named
    size would add nothing and its pixel sizes are not on the seed page.
    """

    provider = "fal"
    model = "fal-ai/flux/krea"

    def map(self, common: RoutedInput) -> tuple[dict[str, Any], dict[str, Any]]:
        source = "seed 004"
        _check_range("fal", "steps", common.steps, "num_inference_steps", 1, 50, source)
        _check_range("fal", "guidance", common.guidance, "guidance_scale", 1, 20, source)
        _check_range("fal", "num_images", common.num_images, "num_images", 1, 4, source)
        out: dict[str, Any] = {"prompt": common.prompt}
        if common.size is not None:
            width, height = common.size
            _check_range("fal", "width", width, "image_size.width", 1, MAX_SIDE, source)
            _check_range("fal", "height", height, "image_size.height", 1, MAX_SIDE, source)
            out["image_size"] = {"width": width, "height": height}
        if common.num_images is not None:
            out["num_images"] = common.num_images
        if common.steps is not None:
            out["num_inference_steps"] = common.steps
        if common.guidance is not None:
            out["guidance_scale"] = common.guidance
        if common.seed is not None:
            out["seed"] = common.seed
        return out, {}


# --- Scenario: model_flux-krea-dev (seed 000) -------------------------------------------------


@dataclass(frozen=True)
class AspectRatio:
    label: str
    width: int
    height: int

    @property
    def value(self) -> Fraction:
        return Fraction(self.width, self.height)


# Seed 000 documents `aspectRatio` as a string (default "4:3") without listing its values.
# Inferred: the ratios Scenario lists for its other FLUX model (docs.scenario.com, "BFL" models,
# model_flux-kontext-editing), which the upstream FLUX.1 Krea [dev] also offers; "auto" only
# applies to a reference image.
SCENARIO_ASPECT_RATIOS: tuple[AspectRatio, ...] = tuple(
    AspectRatio(label, int(w), int(h))
    for label in ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")
    for w, h in [label.split(":")]
)
# Seed 000: `megapixels` is a string, default "1", "Approximate number of megapixels"; no other
# value is documented, so only the default is sent (others exist upstream, e.g. "0.25": adding
# one here is enough, the nearest-pixel-count rule already chooses among tiers).
SCENARIO_MEGAPIXELS: tuple[str, ...] = ("1",)


def _log_distance(a: Fraction, b: Fraction) -> Fraction:
    """A monotone stand-in for |ln(a) - ln(b)|, exact: max(a/b, b/a)."""
    return max(a / b, b / a)


def nominal_size(ratio: AspectRatio, megapixels: str) -> tuple[int, int]:
    """The size Scenario is asked for by (ratio, megapixels): the ratio at megapixels * 2**20
    pixels, each side rounded. An approximation: Scenario documents no pixel sizes."""
    pixels = float(Fraction(megapixels) * MEGAPIXEL)
    return (
        round(math.sqrt(pixels * ratio.width / ratio.height)),
        round(math.sqrt(pixels * ratio.height / ratio.width)),
    )


def nearest_scenario_size(width: int, height: int) -> tuple[AspectRatio, str]:
    """Nearest aspect ratio (in log scale), then nearest megapixel tier (in log scale); ties go
    to the option listed first."""
    asked_ratio = Fraction(width, height)
    ratio = min(SCENARIO_ASPECT_RATIOS, key=lambda r: _log_distance(asked_ratio, r.value))
    asked_pixels = Fraction(width * height)
    tier = min(
        SCENARIO_MEGAPIXELS, key=lambda mp: _log_distance(asked_pixels, Fraction(mp) * MEGAPIXEL)
    )
    return ratio, tier


class ScenarioFluxKreaDevMapping(ProviderMapping):
    """Scenario's parameters (seed 000): `aspectRatio` and `megapixels` (strings) for the size,
    `numOutputs`, `steps` (>= 1, no maximum documented), `guidance` (>= 0, no maximum
    documented), `seed`. The size is the nearest (aspect ratio, megapixels) option, recorded in
    the adjustments unless the asked size is that option's nominal size (see module docstring).
    """

    provider = "scenario"
    model = "model_flux-krea-dev"

    def map(self, common: RoutedInput) -> tuple[dict[str, Any], dict[str, Any]]:
        source = "seed 000"
        _check_range("scenario", "steps", common.steps, "steps", 1, None, source)
        _check_range("scenario", "guidance", common.guidance, "guidance", 0, None, source)
        # numOutputs: no range on seed 000; the service's own schema allows 1..16.
        _check_range("scenario", "num_images", common.num_images, "numOutputs", 1, 16, source)
        out: dict[str, Any] = {"prompt": common.prompt}
        adjustments: dict[str, Any] = {}
        if common.size is not None:
            width, height = common.size
            ratio, megapixels = nearest_scenario_size(width, height)
            out["aspectRatio"] = ratio.label
            out["megapixels"] = megapixels
            approximate = nominal_size(ratio, megapixels)
            if approximate != (width, height):
                adjustments["size"] = {
                    "asked": [width, height],
                    "sent": {"aspectRatio": ratio.label, "megapixels": megapixels},
                    "approximate_size": list(approximate),
                }
        if common.num_images is not None:
            out["numOutputs"] = common.num_images
        if common.steps is not None:
            out["steps"] = common.steps
        if common.guidance is not None:
            out["guidance"] = common.guidance
        if common.seed is not None:
            out["seed"] = common.seed
        return out, adjustments


# --- The catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedModel:
    """A model served by several providers: its common name and one mapping per provider."""

    name: str
    mappings: dict[str, ProviderMapping]

    @classmethod
    def of(cls, name: str, *mappings: ProviderMapping) -> RoutedModel:
        by_provider: dict[str, ProviderMapping] = {m.provider: m for m in mappings}
        if len(by_provider) != len(mappings):
            raise ValueError(f"{name}: one mapping per provider")
        for m in mappings:
            if (m.provider, m.model) not in MODELS:
                raise ValueError(f"{name}: {m.provider} model {m.model} has no input schema")
        return cls(name, by_provider)

    def model_of(self, provider: str) -> str:
        return self.mappings[provider].model


ROUTED_MODELS: dict[str, RoutedModel] = {
    model.name: model
    for model in (
        RoutedModel.of("flux-1-krea-dev", FalFluxKreaMapping(), ScenarioFluxKreaDevMapping()),
    )
}


def _routed_model(name: str) -> RoutedModel:
    try:
        return ROUTED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(ROUTED_MODELS))
        raise ValueError(f"unknown routed model {name!r} (routed models: {known})") from None


def translate(model: str, provider: str, common: RoutedInput) -> Translation:
    """The provider's own input for a routed request. Raises ValueError for an unknown routed
    model or a provider it has no mapping for, Unservable when the provider cannot serve it."""
    routed = _routed_model(model)
    mapping = routed.mappings.get(provider)
    if mapping is None:
        mapped = ", ".join(routed.mappings)
        raise ValueError(f"{model} has no mapping for provider {provider!r} (mapped: {mapped})")
    provider_input, adjustments = mapping.map(common)
    # The mapping's output must be what the provider's own schema accepts: a failure here is a
    # bug in the mapping, never the client's.
    MODELS[(mapping.provider, mapping.model)].input_model.model_validate(provider_input)
    return Translation(mapping.provider, mapping.model, provider_input, adjustments)


def servable_providers(
    model: str, providers_in_order: list[str], common: RoutedInput
) -> tuple[list[str], dict[str, str]]:
    """The providers (in route order) that can serve `common`, and for each other one why not.
    An empty first list means no provider on the route can serve this input (a 422)."""
    routed = _routed_model(model)
    servable: list[str] = []
    reasons: dict[str, str] = {}
    for provider in providers_in_order:
        if provider not in routed.mappings:
            reasons[provider] = f"{model} has no mapping for {provider}"
            continue
        try:
            translate(model, provider, common)
        except Unservable as exc:
            reasons[provider] = str(exc)
        else:
            servable.append(provider)
    return servable, reasons


def parse_routes(text: str) -> dict[str, list[str]]:
    """Parses `ROUTES`: `model=provider,provider;model=...`, providers in order of preference
    (default `DEFAULT_ROUTES`). Blank text means no routed model. Raises ValueError naming the
    problem: an empty part, a part without `=`, an unknown routed model, an unknown provider, a
    provider the model has no mapping for, a model or a provider given twice."""
    routes: dict[str, list[str]] = {}
    if not text.strip():
        return routes
    for index, part in enumerate(text.split(";"), start=1):
        entry = part.strip()
        if not entry:
            raise ValueError(f"ROUTES: entry {index} is empty in {text!r}")
        name, sep, providers_text = (s.strip() for s in entry.partition("="))
        if not sep:
            raise ValueError(f"ROUTES: entry {entry!r} is not model=provider,provider")
        if not name:
            raise ValueError(f"ROUTES: entry {entry!r} names no model")
        routed = _routed_model(name)
        if name in routes:
            raise ValueError(f"ROUTES: model {name!r} is given twice")
        providers: list[str] = []
        for provider in (p.strip() for p in providers_text.split(",")):
            if not provider:
                raise ValueError(f"ROUTES: entry {entry!r} has an empty provider")
            if provider not in PROVIDERS:
                known = ", ".join(PROVIDERS)
                raise ValueError(f"ROUTES: unknown provider {provider!r} (providers: {known})")
            if provider not in routed.mappings:
                mapped = ", ".join(routed.mappings)
                raise ValueError(
                    f"ROUTES: {name} has no mapping for provider {provider!r} (mapped: {mapped})"
                )
            if provider in providers:
                raise ValueError(f"ROUTES: provider {provider!r} is given twice for {name}")
            providers.append(provider)
        routes[name] = providers
    return routes
