"""Each model's input schema, from the providers' own parameter tables."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.model_inputs import MODELS

VALID: dict[tuple[str, str], dict[str, Any]] = {
    ("krea", "bfl/flux-1-dev"): {"prompt": "p"},
    ("fal", "fal-ai/flux/krea"): {"prompt": "p"},
    ("scenario", "model_flux-krea-dev"): {},
    ("scenario", "model_flux-kontext-editing"): {"prompt": "p", "referenceImages": ["asset_1"]},
    ("scenario", "model_bfl-flux-2-klein-4b-base"): {"prompt": "p"},
}

INVALID: list[tuple[tuple[str, str], dict[str, Any], tuple[str | int, ...]]] = [
    (("krea", "bfl/flux-1-dev"), {}, ("prompt",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "x" * 1801}, ("prompt",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "width": 511}, ("width",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "height": 2369}, ("height",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "steps": 0}, ("steps",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "steps": "25"}, ("steps",)),
    (
        ("krea", "bfl/flux-1-dev"),
        {"prompt": "p", "guidance_scale_flux": 24.5},
        ("guidance_scale_flux",),
    ),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "imageUrl": "not a url"}, ("imageUrl",)),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "styles": [{"strength": 1}]}, ("styles", 0, "id")),
    (("krea", "bfl/flux-1-dev"), {"prompt": "p", "num_images": 2}, ("num_images",)),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "num_images": 5}, ("num_images",)),
    (
        ("fal", "fal-ai/flux/krea"),
        {"prompt": "p", "num_inference_steps": 51},
        ("num_inference_steps",),
    ),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "guidance_scale": 0.5}, ("guidance_scale",)),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "output_format": "webp"}, ("output_format",)),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "acceleration": "max"}, ("acceleration",)),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "sync_mode": "yes"}, ("sync_mode",)),
    (("fal", "fal-ai/flux/krea"), {"prompt": "p", "image_size": "huge"}, ("image_size",)),
    (("scenario", "model_flux-krea-dev"), {"promptStrength": 1.5}, ("promptStrength",)),
    (("scenario", "model_flux-krea-dev"), {"aspectRatio": "wide"}, ("aspectRatio",)),
    (("scenario", "model_flux-kontext-editing"), {"prompt": "p"}, ("referenceImages",)),
    (
        ("scenario", "model_flux-kontext-editing"),
        {"prompt": "p", "referenceImages": ["a"], "guidanceScale": 11},
        ("guidanceScale",),
    ),
    (("scenario", "model_bfl-flux-2-klein-4b-base"), {"prompt": "p", "width": 1000}, ("width",)),
    (("scenario", "model_bfl-flux-2-klein-4b-base"), {"prompt": "p", "height": 770}, ("height",)),
    (("scenario", "model_bfl-flux-2-klein-4b-base"), {"width": 1024}, ("prompt",)),
]


def test_every_model_of_the_contract_is_declared() -> None:
    assert set(MODELS) == set(VALID)


@pytest.mark.parametrize("key", list(VALID))
def test_minimal_valid_input_gets_its_documented_defaults(key: tuple[str, str]) -> None:
    request = MODELS[key].input_model.model_validate(VALID[key]).provider_request()
    assert VALID[key].items() <= request.items()
    assert "seed" not in request  # no invented values


def test_defaults_sent_to_each_provider() -> None:
    assert MODELS[("krea", "bfl/flux-1-dev")].input_model.model_validate({"prompt": "p"}).provider_request() == {
        "prompt": "p", "width": 1024, "height": 1024, "steps": 25, "guidance_scale_flux": 3.0}  # fmt: skip
    fal = (
        MODELS[("fal", "fal-ai/flux/krea")]
        .input_model.model_validate({"prompt": "p"})
        .provider_request()
    )
    assert (
        fal["image_size"] == "landscape_4_3"
        and fal["num_inference_steps"] == 28
        and fal["guidance_scale"] == 4.5
    )
    fal_custom = MODELS[("fal", "fal-ai/flux/krea")].input_model.model_validate(
        {"prompt": "p", "image_size": {"width": 640, "height": 480}}).provider_request()  # fmt: skip
    assert fal_custom["image_size"] == {"width": 640, "height": 480}


@pytest.mark.parametrize(("key", "input", "loc"), INVALID)
def test_invalid_input_names_the_field(
    key: tuple[str, str], input: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as raised:
        MODELS[key].input_model.model_validate(input)
    assert loc in [err["loc"][: len(loc)] for err in raised.value.errors()]


@pytest.mark.parametrize(
    ("value", "accepted"), [(2.0, True), (2, True), (2.5, False), ("2", False), (True, False)]
)
def test_an_integer_parameter_takes_a_whole_float_as_json_schema_does(
    value: object, accepted: bool
) -> None:
    model = MODELS[("fal", "fal-ai/flux/krea")].input_model
    body = {"prompt": "x", "num_images": value}
    if accepted:
        request = model.model_validate(body).provider_request()
        assert request["num_images"] == 2 and isinstance(request["num_images"], int)
    else:
        with pytest.raises(ValidationError):
            model.model_validate(body)
