"""A routed model's common input and its translation to each provider (schemas/routing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.model_inputs import MODELS
from schemas.routing import (
    DEFAULT_ROUTES,
    MAX_SEED,
    MAX_SIDE,
    ROUTED_MODELS,
    SCENARIO_ASPECT_RATIOS,
    RoutedInput,
    Unservable,
    nominal_size,
    parse_routes,
    servable_providers,
    translate,
)

MODEL = "flux-1-krea-dev"
PROVIDERS = ["fal", "scenario"]
FULL = {
    "prompt": "a lighthouse at dawn",
    "width": 1000,
    "height": 700,
    "num_images": 2,
    "seed": 7,
    "steps": 30,
    "guidance": 3.5,
}


def common(**fields: Any) -> RoutedInput:
    return RoutedInput.model_validate({"prompt": "p", **fields})


def provider_schema_accepts(provider: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The request the provider's own schema would send (raises when it refuses `body`)."""
    return MODELS[(provider, model)].input_model.model_validate(body).provider_request()


def test_the_catalog_maps_flux_krea_dev_to_fal_and_scenario() -> None:
    routed = ROUTED_MODELS[MODEL]
    assert {p: m.model for p, m in routed.mappings.items()} == {
        "fal": "fal-ai/flux/krea",
        "scenario": "model_flux-krea-dev",
    }
    assert all((p, m.model) in MODELS for p, m in routed.mappings.items())


def test_full_input_translated_to_fal() -> None:
    t = translate(MODEL, "fal", RoutedInput.model_validate(FULL))
    assert (t.provider, t.model) == ("fal", "fal-ai/flux/krea")
    assert t.input == {
        "prompt": "a lighthouse at dawn",
        "image_size": {"width": 1000, "height": 700},
        "num_images": 2,
        "num_inference_steps": 30,
        "guidance_scale": 3.5,
        "seed": 7,
    }
    assert t.adjustments == {}
    sent = provider_schema_accepts("fal", t.model, t.input)
    assert sent["image_size"] == {"width": 1000, "height": 700} and sent["num_images"] == 2


def test_full_input_translated_to_scenario_with_its_size_recorded() -> None:
    t = translate(MODEL, "scenario", RoutedInput.model_validate(FULL))
    assert (t.provider, t.model) == ("scenario", "model_flux-krea-dev")
    assert t.input == {
        "prompt": "a lighthouse at dawn",
        "aspectRatio": "3:2",  # 1000/700 = 1.43: 3:2 (1.5) is nearer than 4:3 (1.33)
        "megapixels": "1",
        "numOutputs": 2,
        "steps": 30,
        "guidance": 3.5,
        "seed": 7,
    }
    assert t.adjustments == {
        "size": {
            "asked": [1000, 700],
            "sent": {"aspectRatio": "3:2", "megapixels": "1"},
            "approximate_size": [1254, 836],
        }
    }
    sent = provider_schema_accepts("scenario", t.model, t.input)
    assert sent["aspectRatio"] == "3:2" and sent["numOutputs"] == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parameters_left_out_get_the_providers_own_defaults(provider: str) -> None:
    t = translate(MODEL, provider, common())
    assert t.input == {"prompt": "p"} and t.adjustments == {}
    sent = provider_schema_accepts(provider, t.model, t.input)
    if provider == "fal":
        assert (sent["image_size"], sent["guidance_scale"], sent["num_inference_steps"]) == (
            "landscape_4_3",
            4.5,
            28,
        )
    else:
        assert (sent["aspectRatio"], sent["guidance"], sent["steps"]) == ("4:3", 3, 28)


@pytest.mark.parametrize(("width", "height"), [(1000, 700), (1, 1), (MAX_SIDE, 1), (640, 480)])
def test_fal_takes_every_size_exactly(width: int, height: int) -> None:
    t = translate(MODEL, "fal", common(width=width, height=height))
    assert t.input["image_size"] == {"width": width, "height": height}
    assert t.adjustments == {}
    provider_schema_accepts("fal", t.model, t.input)


@pytest.mark.parametrize("ratio", SCENARIO_ASPECT_RATIOS, ids=lambda r: r.label)
def test_scenario_nominal_sizes_pass_untouched(ratio: Any) -> None:
    width, height = nominal_size(ratio, "1")
    t = translate(MODEL, "scenario", common(width=width, height=height))
    assert (t.input["aspectRatio"], t.input["megapixels"]) == (ratio.label, "1")
    assert t.adjustments == {}
    provider_schema_accepts("scenario", t.model, t.input)


def test_scenario_nominal_sizes_of_common_ratios() -> None:
    by_label = {r.label: nominal_size(r, "1") for r in SCENARIO_ASPECT_RATIOS}
    assert by_label["1:1"] == (1024, 1024)
    assert by_label["16:9"] == (1365, 768)
    assert by_label["4:3"] == (1182, 887)
    assert by_label["9:16"] == (768, 1365)


@pytest.mark.parametrize(
    ("size", "ratio", "approximate"),
    [
        ((512, 512), "1:1", [1024, 1024]),  # exact ratio, a quarter of the pixels
        ((1920, 1080), "16:9", [1365, 768]),  # exact ratio, twice the pixels
        ((1024, 768), "4:3", [1182, 887]),  # fal's default size
        ((768, 1024), "3:4", [887, 1182]),
        ((1000, 700), "3:2", [1254, 836]),
        ((1100, 1000), "1:1", [1024, 1024]),  # 1.1: nearer 1:1 than 4:3
        ((MAX_SIDE, 1), "21:9", [1564, 670]),  # beyond the widest ratio: the widest
        ((1, MAX_SIDE), "9:21", [670, 1564]),
    ],
)
def test_scenario_inexact_sizes_map_to_the_nearest_and_are_recorded(
    size: tuple[int, int], ratio: str, approximate: list[int]
) -> None:
    t = translate(MODEL, "scenario", common(width=size[0], height=size[1]))
    assert (t.input["aspectRatio"], t.input["megapixels"]) == (ratio, "1")
    assert t.adjustments == {
        "size": {
            "asked": list(size),
            "sent": {"aspectRatio": ratio, "megapixels": "1"},
            "approximate_size": approximate,
        }
    }
    provider_schema_accepts("scenario", t.model, t.input)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"prompt": "p", "num_images": 0}, "num_images"),
        ({"prompt": "p", "num_images": 5}, "num_images"),
        ({"prompt": "p", "num_images": "2"}, "num_images"),  # strict: no strings for numbers
        ({"prompt": "p", "num_images": True}, "num_images"),
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "p", "image_size": "square_hd"}, "image_size"),  # a provider's own field
        ({"prompt": "p", "guidance_scale": 3}, "guidance_scale"),
        ({"prompt": "p", "width": 0, "height": 10}, "width"),
        ({"prompt": "p", "width": 10, "height": MAX_SIDE + 1}, "height"),
        ({"prompt": "p", "steps": 0}, "steps"),
        ({"prompt": "p", "steps": 51}, "steps"),
        ({"prompt": "p", "steps": 28.5}, "steps"),
        ({"prompt": "p", "guidance": -0.5}, "guidance"),
        ({"prompt": "p", "guidance": 20.5}, "guidance"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "seed": MAX_SEED + 1}, "seed"),
    ],
)
def test_routed_input_refuses_out_of_bounds_missing_and_extra_fields(
    fields: dict[str, Any], loc: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        RoutedInput.model_validate(fields)
    assert loc in [err["loc"][0] for err in raised.value.errors()]


def test_width_without_height_is_refused() -> None:
    with pytest.raises(ValidationError, match="width and height must be given together"):
        RoutedInput.model_validate({"prompt": "p", "width": 1024})


def test_json_schema_is_openapi_ready() -> None:
    schema = RoutedInput.model_json_schema()
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "prompt",
        "width",
        "height",
        "num_images",
        "seed",
        "steps",
        "guidance",
    }
    assert all(prop.get("description") for prop in schema["properties"].values())
    together = [(rule["if"]["required"], rule["then"]["required"]) for rule in schema["allOf"]]
    assert together == [(["width"], ["height"]), (["height"], ["width"])]
    num_images = next(s for s in schema["properties"]["num_images"]["anyOf"] if "minimum" in s)
    assert (num_images["minimum"], num_images["maximum"]) == (1, 4)


def test_guidance_below_one_is_servable_by_scenario_only() -> None:
    low = common(guidance=0.5)
    with pytest.raises(Unservable, match="guidance") as raised:
        translate(MODEL, "fal", low)
    assert (raised.value.provider, raised.value.parameter) == ("fal", "guidance")
    assert "guidance_scale takes 1..20" in str(raised.value)
    servable, reasons = servable_providers(MODEL, ["fal", "scenario"], low)
    assert servable == ["scenario"]
    assert set(reasons) == {"fal"} and "guidance" in reasons["fal"]
    t = translate(MODEL, "scenario", low)
    assert t.input["guidance"] == 0.5 and t.adjustments == {}


def test_no_provider_on_the_route_can_serve() -> None:
    servable, reasons = servable_providers(MODEL, ["fal"], common(guidance=0.0, steps=40))
    assert servable == []
    assert reasons == {
        "fal": "fal cannot serve guidance: guidance=0 but its guidance_scale takes 1..20 (seed 004)"
    }


def test_servable_providers_keep_route_order_and_name_unmapped_ones() -> None:
    servable, reasons = servable_providers(MODEL, ["scenario", "krea", "fal"], common(steps=50))
    assert servable == ["scenario", "fal"]
    assert reasons == {"krea": "flux-1-krea-dev has no mapping for krea"}


def test_translate_refuses_unknown_model_and_unmapped_provider() -> None:
    with pytest.raises(ValueError, match="unknown routed model 'flux-2'"):
        translate("flux-2", "fal", common())
    with pytest.raises(ValueError, match="no mapping for provider 'krea'"):
        translate(MODEL, "krea", common())


def test_parse_routes_default() -> None:
    assert parse_routes(DEFAULT_ROUTES) == {MODEL: ["fal", "scenario"]}


@pytest.mark.parametrize(
    ("text", "routes"),
    [
        ("flux-1-krea-dev=scenario,fal", {MODEL: ["scenario", "fal"]}),
        (" flux-1-krea-dev = fal , scenario ", {MODEL: ["fal", "scenario"]}),
        ("flux-1-krea-dev=fal", {MODEL: ["fal"]}),
        ("", {}),
        ("   ", {}),
    ],
)
def test_parse_routes_good(text: str, routes: dict[str, list[str]]) -> None:
    assert parse_routes(text) == routes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flux-2=fal", "unknown routed model 'flux-2'"),
        ("flux-1-krea-dev=fal,replicate", "unknown provider 'replicate'"),
        ("flux-1-krea-dev=krea", "flux-1-krea-dev has no mapping for provider 'krea'"),
        ("flux-1-krea-dev=fal,fal", "provider 'fal' is given twice"),
        ("flux-1-krea-dev=fal;flux-1-krea-dev=scenario", "model 'flux-1-krea-dev' is given twice"),
        ("flux-1-krea-dev=fal;", "entry 2 is empty"),
        (";flux-1-krea-dev=fal", "entry 1 is empty"),
        ("flux-1-krea-dev=", "has an empty provider"),
        ("flux-1-krea-dev=fal,,scenario", "has an empty provider"),
        ("flux-1-krea-dev", "is not model=provider,provider"),
        ("=fal", "names no model"),
    ],
)
def test_parse_routes_bad(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_routes(text)


# --- property: every servable provider's translation is valid for that provider ---------------

sizes = st.one_of(
    st.none(),
    st.tuples(st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE)),
    st.sampled_from([nominal_size(r, "1") for r in SCENARIO_ASPECT_RATIOS]),
)


@st.composite
def routed_inputs(draw: st.DrawFn) -> RoutedInput:
    fields: dict[str, Any] = {"prompt": draw(st.text(min_size=1, max_size=20))}
    size = draw(sizes)
    if size is not None:
        fields["width"], fields["height"] = size
    optional = {
        "num_images": st.integers(1, 4),
        "seed": st.integers(0, MAX_SEED),
        "steps": st.integers(1, 50),
        "guidance": st.one_of(st.floats(0, 20, allow_nan=False), st.integers(0, 20)),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(strategy)
    return RoutedInput.model_validate(fields)


@settings(max_examples=200, deadline=None)
@given(routed_inputs())
def test_every_servable_translation_validates_against_its_provider(value: RoutedInput) -> None:
    servable, reasons = servable_providers(MODEL, PROVIDERS, value)
    assert servable, reasons  # every valid common input has a provider on the default route
    assert set(servable) | set(reasons) == set(PROVIDERS)
    for provider in servable:
        t = translate(MODEL, provider, value)
        sent = provider_schema_accepts(provider, t.model, t.input)
        assert sent["prompt"] == value.prompt
        assert set(t.adjustments) <= {"size"}
        if provider == "fal":
            assert t.adjustments == {}
        elif value.size is not None:
            exact = value.size in {nominal_size(r, "1") for r in SCENARIO_ASPECT_RATIOS}
            assert (t.adjustments == {}) == exact
    for provider in reasons:
        with pytest.raises(Unservable):
            translate(MODEL, provider, value)
