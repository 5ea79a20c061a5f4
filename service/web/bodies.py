"""Reading request bodies with a hard size limit, whatever the client claims."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)

API_BODY_LIMIT = 1024 * 1024
CALLBACK_BODY_LIMIT = 5 * 1024 * 1024


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes (declared or streamed) with 413."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body over the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    return value


def nul_location(value: Any) -> list[str | int] | None:
    """Where the first string (or object key) holding U+0000 is, or None. PostgreSQL's text and
    jsonb cannot store that character, so no request may carry one (the OpenAPI document's
    strings say so with a pattern)."""
    if isinstance(value, str):
        return [] if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return [key]
            inner = nul_location(item)
            if inner is not None:
                return [key, *inner]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            inner = nul_location(item)
            if inner is not None:
                return [index, *inner]
    return None


async def read_json_object(request: web.Request, *, limit: int = API_BODY_LIMIT) -> dict[str, Any]:
    """A client's JSON object body: 413 past `limit`, 400 when not a JSON object, 422 when a
    string in it holds U+0000."""
    body = await read_body(request, limit=limit)
    value = parse_json_object(body)
    # JSON can only carry U+0000 escaped; the walk runs only when the escape is there.
    location = nul_location(value) if b"\\u0000" in body else None
    if location is not None:
        raise ValidationFailed(
            "request validation failed",
            details=[{"loc": ["body", *location], "msg": "must not contain U+0000 (NUL)",
                      "type": "string_nul"}],
        )  # fmt: skip
    return value


def validation_details(
    exc: ValidationError, *, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """pydantic's errors as the contract's `details`: `{"loc": [...], "msg": "...", "type"}`."""
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def validate_model(model: type[M], value: Any, *, prefix: tuple[str | int, ...] = ("body",)) -> M:
    """Validates `value` as `model`, or raises 422 with per-field details."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ValidationFailed(
            "request validation failed", details=validation_details(exc, prefix=prefix)
        ) from exc
