"""Schemathesis hooks for the conformance runs (loaded through SCHEMATHESIS_HOOKS).

A client gives each new job its own Idempotency-Key. A key Schemathesis generates is short
("0") and would come back with different bodies, which the API answers 422
`idempotency_key_reused` by contract (tested in tests/acceptance/test_jobs_api.py): a valid key
is made unique; an invalid one (negative testing) is left as generated.

The event stream never ends: Schemathesis reads it until its request timeout (10 s by default)
has passed in total, then checks what arrived. One second of it is as good a sample, and keeps
the run's waiting to a tenth."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

from schemas.jobs import IDEMPOTENCY_KEY_PATTERN

STREAM_PATH = "/v1/events/stream"
STREAM_READ_S = 1.0


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    del context
    headers = case.headers
    if headers is not None and IDEMPOTENCY_KEY_PATTERN.match(headers.get("Idempotency-Key", "")):
        headers["Idempotency-Key"] = uuid.uuid4().hex
    if case.operation.path == STREAM_PATH:
        kwargs["timeout"] = STREAM_READ_S
