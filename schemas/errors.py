"""The error body every failed request gets (CONTRACT.md, Errors)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """One field's problem: where (`loc`) and what (`msg`)."""

    loc: list[str | int]
    msg: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorBody(BaseModel):
    """`{"error": {"code", "message", "details"}}`."""

    error: ErrorInfo
