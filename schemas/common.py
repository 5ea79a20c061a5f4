"""Types shared by every boundary model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a Z, as CONTRACT.md shows (2026-11-21T10:00:00.000Z)."""
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]
