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

import rfc8785

from schemas.events import Event


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value."""
    return rfc8785.dumps(value)


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
