"""Boundary models, ids, cursors and named queries, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas.common import format_timestamp
from service.db.queries import load_queries, parse_queries
from service.store import new_job_id
from service.web.jobs_api import JOB_ID_PATTERN, decode_cursor, encode_cursor


def test_timestamps_are_utc_milliseconds_with_z() -> None:
    paris = timezone(timedelta(hours=1))
    assert (
        format_timestamp(datetime(2026, 11, 21, 11, 0, 1, 250999, tzinfo=paris))
        == "2026-11-21T10:00:01.250Z"
    )
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


def test_job_ids_match_the_pattern_and_sort_by_creation() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert all(JOB_ID_PATTERN.match(i) for i in ids)
    assert len(set(ids)) == 200
    assert new_job_id(1_700_000_000_000) < new_job_id(1_700_000_000_001) < new_job_id()


def test_cursor_round_trip() -> None:
    job_id = new_job_id()
    assert decode_cursor(encode_cursor(job_id)) == job_id


def test_named_queries_parse() -> None:
    text = "-- name: one\nSELECT 1;\n\n-- name: two\n-- a comment\nSELECT 2;\n"
    assert parse_queries(text) == {"one": "SELECT 1;", "two": "-- a comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    assert {"create_jobs", "apply_observations", "list_jobs"} <= set(load_queries())
