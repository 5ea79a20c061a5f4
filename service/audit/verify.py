"""Verification of the audit chain from what the database holds now: every job's chain (each
event's hash recomputed, each prev_hash followed, seqs contiguous, ids in seq order, the job's
own count of events), seals left without their event, and the checkpoints (their chain, their
signatures, and the heads they recorded against the log as it is now). Whoever changed the log,
a superuser with triggers disabled included, leaves one of these broken, unless they also
rewrote every later hash and checkpoint: a checkpoint kept outside (`--checkpoint ID=DIGEST`)
or a signed one proves that too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.audit import AuditFailure, Checkpoint, JobAudit
from service.audit.chain import checkpoint_digest, event_hash
from service.audit.signing import signature_holds
from service.store.audit import AuditLog, ChainRow, Head


@dataclass
class JobChain:
    """What one job's chain showed."""

    job_id: str
    events: int = 0
    sealed: int = 0
    failure: AuditFailure | None = None


def _event_failure(row: ChainRow, reason: str) -> AuditFailure:
    event = row.event
    return AuditFailure(
        event_id=event.id if event else None, job_id=row.job_id,
        seq=event.seq if event else None, reason=reason,
    )  # fmt: skip


def check_job_chain(rows: Iterable[ChainRow]) -> JobChain:
    """Checks the rows of one job (in seq order); stops at the first failure."""
    chain: JobChain | None = None
    expected_seq = 1
    prev_id = 0
    prev_hash: str | None = None
    unsealed: ChainRow | None = None
    last_seq = 0
    for row in rows:
        chain = chain or JobChain(row.job_id)
        last_seq = row.job_last_seq
        event = row.event
        if event is None:
            break
        failure = _check_event(row, expected_seq, prev_id, prev_hash, unsealed)
        if failure is not None:
            chain.failure = failure
            return chain
        chain.events += 1
        if event.hash is None:
            unsealed = unsealed or row
        else:
            chain.sealed += 1
        expected_seq, prev_id, prev_hash = event.seq + 1, event.id, event.hash
    assert chain is not None, "a job's rows are never empty"
    if last_seq != chain.events:
        removed = last_seq > chain.events
        chain.failure = AuditFailure(
            event_id=None, job_id=chain.job_id, seq=chain.events + 1 if removed else last_seq + 1,
            reason=(
                f"the job counts {last_seq} events but the log holds {chain.events}: "
                + ("its last events were removed" if removed else "events were inserted")
            ),
        )  # fmt: skip
    return chain


def _check_event(
    row: ChainRow, expected_seq: int, prev_id: int, prev_hash: str | None, unsealed: ChainRow | None
) -> AuditFailure | None:
    event = row.event
    assert event is not None
    if event.seq < expected_seq:
        return _event_failure(row, f"seq {event.seq} appears twice: an event was inserted")
    if event.seq > expected_seq:
        return _event_failure(
            row, f"seq {expected_seq} is missing before seq {event.seq}: an event was removed"
        )
    if event.id <= prev_id:
        return _event_failure(row, "its id is below its predecessor's: events were reordered")
    if event.hash is None:
        return None
    if unsealed is not None:
        return _event_failure(unsealed, "not sealed although later events are: inserted")
    if row.sealed_as != (event.job_id, event.seq):
        return _event_failure(row, f"it was sealed as {row.sealed_as}: events were moved")
    if event.prev_hash != prev_hash:
        return _event_failure(row, "prev_hash is not the previous event's hash")
    if event_hash(event, prev_hash=event.prev_hash) != event.hash:
        return _event_failure(row, "its content no longer matches its hash: edited")
    return None


async def _job_groups(rows: AsyncIterator[ChainRow]) -> AsyncIterator[list[ChainRow]]:
    group: list[ChainRow] = []
    async for row in rows:
        if group and row.job_id != group[0].job_id:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


async def verify_job(log: AuditLog, job_id: str) -> JobAudit | None:
    """One job's chain (None: no such job)."""
    rows = [row async for row in log.chain_rows(job_id)]
    if not rows:
        return None
    chain = check_job_chain(rows)
    if chain.failure is None:
        orphans = await log.orphan_seals(job_id)
        if orphans:
            chain.failure = _orphan_failure(orphans[0].event_id, job_id, orphans[0].seq)
    status = (
        "failed" if chain.failure else "verified" if chain.sealed == chain.events else "pending"
    )
    return JobAudit(
        job_id=job_id, status=status, events=chain.events, sealed=chain.sealed,
        failure=chain.failure, checked_at=datetime.now(UTC),
    )  # fmt: skip


def _orphan_failure(event_id: int, job_id: str, seq: int) -> AuditFailure:
    return AuditFailure(
        event_id=event_id, job_id=job_id, seq=seq,
        reason="the event is gone but its seal remains: removed",
    )  # fmt: skip


@dataclass
class Report:
    """The outcome of a whole verification."""

    jobs: int = 0
    events: int = 0
    unsealed: int = 0
    checkpoints: int = 0
    failures: list[AuditFailure] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.failures


async def verify_all(
    log: AuditLog,
    *,
    job_id: str | None = None,
    kept: dict[int, str] | None = None,
    public_key: str | None = None,
) -> Report:
    """Every chain (or one job's) and, for the whole log, every checkpoint. `kept` maps
    checkpoint ids to digests kept outside; `public_key` pins the key checkpoints are signed
    with (then an unsigned or otherwise signed checkpoint fails)."""
    report = Report()
    async for rows in _job_groups(log.chain_rows(job_id)):
        chain = check_job_chain(rows)
        report.jobs += 1
        report.events += chain.events
        report.unsealed += chain.events - chain.sealed
        if chain.failure is not None:
            report.failures.append(chain.failure)
    for orphan in await log.orphan_seals(job_id):
        report.failures.append(_orphan_failure(orphan.event_id, orphan.job_id, orphan.seq))
    if job_id is None:
        orphan_event = await log.orphan_event()
        if orphan_event is not None:
            report.failures.append(AuditFailure(
                event_id=orphan_event.event_id, job_id=orphan_event.job_id, seq=orphan_event.seq,
                reason="its job is gone: the job was removed",
            ))  # fmt: skip
        await _verify_checkpoints(log, report, kept=kept or {}, public_key=public_key)
    report.failures.sort(key=lambda f: (f.event_id is None, f.event_id or 0, f.checkpoint_id or 0))
    return report


async def _verify_checkpoints(
    log: AuditLog, report: Report, *, kept: dict[int, str], public_key: str | None
) -> None:
    previous: Checkpoint | None = None
    seen: set[int] = set()
    after = 0
    while page := await log.checkpoints(after=after, limit=500):
        for checkpoint in page:
            report.checkpoints += 1
            seen.add(checkpoint.id)
            failure = await _check_checkpoint(log, checkpoint, previous, kept, public_key)
            if failure is not None:
                report.failures.append(failure)
                return
            previous = checkpoint
        after = page[-1].id
    for checkpoint_id in sorted(set(kept) - seen):
        report.failures.append(_checkpoint_failure(checkpoint_id, "the kept checkpoint is gone"))


def _checkpoint_failure(
    checkpoint_id: int, reason: str, head: Head | None = None, *, job_id: str | None = None
) -> AuditFailure:
    return AuditFailure(
        event_id=head.event_id if head else None, job_id=head.job_id if head else job_id,
        seq=head.seq if head else None, checkpoint_id=checkpoint_id, reason=reason,
    )  # fmt: skip


async def _check_checkpoint(
    log: AuditLog,
    checkpoint: Checkpoint,
    previous: Checkpoint | None,
    kept: dict[int, str],
    public_key: str | None,
) -> AuditFailure | None:
    cid = checkpoint.id
    if checkpoint.prev_digest != (previous.digest if previous else None):
        return _checkpoint_failure(cid, "its prev_digest is not the previous checkpoint's digest")
    if cid in kept and kept[cid] != checkpoint.digest:
        return _checkpoint_failure(cid, "its digest differs from the kept one: rewritten")
    signed = checkpoint.signature is not None and checkpoint.public_key is not None
    if signed and not signature_holds(
        public_key=checkpoint.public_key or "", digest=checkpoint.digest,
        signature=checkpoint.signature or "",
    ):  # fmt: skip
        return _checkpoint_failure(cid, "its signature does not hold")
    if public_key is not None and checkpoint.public_key != public_key:
        return _checkpoint_failure(cid, "it is not signed with the pinned public key")
    recorded = await log.checkpoint_heads(cid)
    digest = checkpoint_digest(
        prev_digest=checkpoint.prev_digest, last_event_id=checkpoint.last_event_id,
        heads=[(h.job_id, h.hash or "") for h in recorded],
    )  # fmt: skip
    if digest != checkpoint.digest or len(recorded) != checkpoint.heads:
        return _checkpoint_failure(cid, "its recorded heads do not give its digest: altered")
    after = previous.last_event_id if previous else 0
    now = {h.job_id: h for h in await log.heads_now(after=after, upto=checkpoint.last_event_id)}
    for head in recorded:
        current = now.pop(head.job_id, None)
        if current is None:
            return _checkpoint_failure(
                cid, f"the job's event {head.event_id} (seq {head.seq}), its latest at "
                f"checkpoint {cid}, is gone, as are any others of that time: removed", head,
            )  # fmt: skip
        if (current.event_id, current.hash) != (head.event_id, head.hash):
            return _checkpoint_failure(
                cid, f"the job's latest event at checkpoint {cid} was event {head.event_id} "
                f"(seq {head.seq}); the log now ends that stretch at event {current.event_id} "
                f"(seq {current.seq}): removed or altered", head,
            )  # fmt: skip
    for extra in now.values():
        return _checkpoint_failure(
            cid, f"event {extra.event_id} is in the log before checkpoint {cid}, which did not "
            "cover it: inserted", extra,
        )  # fmt: skip
    return None
