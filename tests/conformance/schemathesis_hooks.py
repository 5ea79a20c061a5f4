"""Schemathesis hooks for `make conformance` (loaded through SCHEMATHESIS_HOOKS).

A client gives each new job its own Idempotency-Key. A key Schemathesis generates is short
("0") and would come back with different bodies, which the API answers 422
`idempotency_key_reused` by contract (tested in tests/acceptance/test_jobs_api.py): a valid key
is made unique; an invalid one (negative testing) is left as generated."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

from schemas.jobs import IDEMPOTENCY_KEY_PATTERN


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    headers = case.headers
    if headers is not None and IDEMPOTENCY_KEY_PATTERN.match(headers.get("Idempotency-Key", "")):
        headers["Idempotency-Key"] = uuid.uuid4().hex
