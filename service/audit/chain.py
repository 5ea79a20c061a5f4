"""What is hashed, exactly (CONTRACT.md, Audit chain), in one place so that the sealer, the
verifier and an outside auditor compute the same thing:

- an event's `hash` is SHA-256 (lowercase hex) of the RFC 8785 (JSON Canonicalization Scheme)
  serialization of the event object as the API returns it, without its `hash` member (its
  `prev_hash` included);
- `prev_hash` is the `hash` of the job's event `seq - 1`, null for `seq` 1;
- a checkpoint's `digest` is SHA-256 of the RFC 8785 serialization of
  `{"prev_digest": <previous checkpoint's digest or null>, "last_event_id": <id>,
    "heads": [[job_id, hash], ...]}`, where `heads` holds, sorted by job id, the latest event's
  hash of every job that has events with ids in (previous `last_event_id`, `last_event_id`].

Chained, the checkpoints cover every job's latest hash at each checkpoint: removing a job, or
the last events of a job, changes a digest that an auditor may have kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import rfc8785

from schemas.events import SAFE_INTEGER, Event


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value. orjson with sorted keys writes exactly those bytes for
    the values `_orjson_is_canonical` admits (60 times faster than the `rfc8785` package, which
    takes every other value); tests/unit/test_audit_hashing.py checks the two agree."""
    if _orjson_is_canonical(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(value)


def _orjson_is_canonical(value: Any) -> bool:
    """Where orjson and RFC 8785 write the same: strings (both escape only what JSON requires,
    the same way), safe integers, floats that both write in plain decimal notation (RFC 8785
    drops ".0" and switches to exponents at other bounds), and object keys in ASCII (RFC 8785
    sorts by UTF-16 code units, orjson by code points: the same order for ASCII)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-SAFE_INTEGER <= value <= SAFE_INTEGER)
    if kind is float:
        return not value.is_integer() and 1e-5 <= abs(value) < 1e15
    if kind is dict:
        return all(
            type(key) is str and key.isascii() and _orjson_is_canonical(item)
            for key, item in value.items()
        )
    if kind is list:
        return all(_orjson_is_canonical(item) for item in value)
    return False


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_hash(event: Event, *, prev_hash: str | None) -> str:
    """The hash of `event` chained to `prev_hash` (whatever `event.prev_hash` holds)."""
    body = event.model_dump(mode="json", exclude={"hash"})
    body["prev_hash"] = prev_hash
    return sha256_hex(canonical(body))


def checkpoint_digest(
    *, prev_digest: str | None, last_event_id: int, heads: Sequence[tuple[str, str]]
) -> str:
    """The digest of one checkpoint over `heads` ((job_id, hash) pairs, any order)."""
    ordered = sorted(heads)
    body = {
        "prev_digest": prev_digest,
        "last_event_id": last_event_id,
        "heads": [[job_id, head] for job_id, head in ordered],
    }
    return sha256_hex(canonical(body))
