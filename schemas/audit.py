"""The audit chain's checkpoints and verification results (CONTRACT.md, Audit chain)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from schemas.common import Timestamp


class Checkpoint(BaseModel):
    """A digest over the latest hash of every job that changed since the previous checkpoint,
    chained to it (service.audit.chain defines it exactly). `signature` (base64 Ed25519 over
    the digest's hex) and `public_key` are set when the service holds AUDIT_SIGNING_KEY."""

    id: int
    created_at: Timestamp
    last_event_id: int
    digest: str
    prev_digest: str | None
    heads: int
    public_key: str | None
    signature: str | None


class CheckpointList(BaseModel):
    checkpoints: list[Checkpoint]
    public_key: str | None  # the key this service signs new checkpoints with, if any


class AuditFailure(BaseModel):
    """The first thing that does not hold: an event (edited, removed, inserted, reordered) or
    a checkpoint."""

    event_id: int | None
    job_id: str | None
    seq: int | None
    checkpoint_id: int | None = None
    reason: str


class JobAudit(BaseModel):
    """`GET /v1/jobs/{id}/audit`: verified (every event sealed and its chain holds), failed,
    or pending (the chain holds so far; the newest events are not sealed yet)."""

    job_id: str
    status: Literal["verified", "failed", "pending"]
    events: int
    sealed: int
    failure: AuditFailure | None
    checked_at: Timestamp
