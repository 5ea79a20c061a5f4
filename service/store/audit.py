"""The audit chain's store (PostgreSQL): seals (each event's hash, chained per job), the
checkpoints over every job's latest hash, and the reads a verification needs. Sealing and
checkpointing take one advisory lock for their transaction, so that with several instances one
seals at a time and the others skip; the hashes are computed by service.audit.chain."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from schemas.audit import Checkpoint
from schemas.events import Event
from service.audit.chain import checkpoint_digest, event_hash
from service.audit.signing import CheckpointSigner
from service.db.cursors import stream
from service.db.database import Database
from service.db.queries import query
from service.store.postgres import event_from_row


@dataclass(frozen=True)
class Head:
    """A job's latest event as of a checkpoint."""

    job_id: str
    event_id: int
    seq: int
    hash: str | None


@dataclass(frozen=True)
class ChainRow:
    """One event of a job's chain with its seal (where the seal says it belongs), or a job
    without events (`event` None)."""

    job_id: str
    job_last_seq: int
    event: Event | None
    sealed_as: tuple[str, int] | None  # (job_id, seq) the seal was made for


@dataclass(frozen=True)
class OrphanSeal:
    event_id: int
    job_id: str
    seq: int


def checkpoint_from_row(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        id=row["id"], created_at=row["created_at"], last_event_id=row["last_event_id"],
        digest=row["digest"], prev_digest=row["prev_digest"], heads=row["heads"],
        public_key=row["public_key"], signature=row["signature"],
    )  # fmt: skip


def _head(row: asyncpg.Record) -> Head:
    return Head(job_id=row["job_id"], event_id=row["event_id"], seq=row["seq"], hash=row["hash"])


class AuditLog:
    """Seals, checkpoints and verification reads on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def seal(self, *, limit: int = 1000) -> int | None:
        """Seals up to `limit` events after the last sealed one, in id order; returns how many
        (None: another instance is sealing now)."""
        async with self.db.connection() as conn, conn.transaction():
            if not await conn.fetchval(query("audit_try_lock")):
                return None
            # Seals are derived data: a crash that loses the last ones loses nothing, since the
            # sealer starts again after the last seal that survived. Not waiting for their WAL
            # flush keeps the sealer from competing with the log's own commits.
            await conn.execute(query("audit_async_commit"))
            events = [
                event_from_row(r) for r in await conn.fetch(query("audit_events_to_seal"), limit)
            ]
            if not events:
                return 0
            job_ids = list({event.job_id for event in events})
            heads = {
                row["job_id"]: row["hash"]
                for row in await conn.fetch(query("audit_latest_seals"), job_ids)
            }
            prev_hashes: list[str | None] = []
            hashes: list[str] = []
            for event in events:
                # seq 1 starts a chain; any later event chains to its job's latest seal (which
                # is seq - 1 unless the log was tampered with, as verification will say).
                prev = heads.get(event.job_id) if event.seq > 1 else None
                digest = event_hash(event, prev_hash=prev)
                heads[event.job_id] = digest
                prev_hashes.append(prev)
                hashes.append(digest)
            await conn.execute(
                query("audit_insert_seals"),
                [e.id for e in events], [e.job_id for e in events], [e.seq for e in events],
                prev_hashes, hashes,
            )  # fmt: skip
            await conn.execute(query("audit_notify_sealed"), str(events[-1].id))
            return len(events)

    async def exists(self) -> bool:
        """Whether this database holds the log and its chain (it was migrated)."""
        return bool(await self.db.fetchval("audit_tables_exist"))

    async def last_checkpoint(self) -> Checkpoint | None:
        row = await self.db.fetchrow("audit_last_checkpoint")
        return checkpoint_from_row(row) if row else None

    async def checkpoint(self, signer: CheckpointSigner | None) -> Checkpoint | None:
        """A new checkpoint over what was sealed since the last one (None: nothing new, or
        another instance holds the lock)."""
        async with self.db.connection() as conn, conn.transaction():
            if not await conn.fetchval(query("audit_try_lock")):
                return None
            last = await conn.fetchrow(query("audit_last_checkpoint"))
            after = last["last_event_id"] if last else 0
            upto = int(await conn.fetchval(query("audit_last_sealed_event_id")))
            if upto <= after:
                return None
            heads = [_head(r) for r in await conn.fetch(query("audit_sealed_heads"), after, upto)]
            prev_digest = last["digest"] if last else None
            digest = checkpoint_digest(
                prev_digest=prev_digest,
                last_event_id=upto,
                heads=[(h.job_id, h.hash or "") for h in heads],
            )
            public_key, signature = (
                (signer.public_key, signer.sign(digest)) if signer else (None, None)
            )
            row = await conn.fetchrow(
                query("audit_insert_checkpoint"),
                upto, digest, prev_digest, len(heads), public_key, signature,
            )  # fmt: skip
            assert row is not None
            await conn.execute(
                query("audit_insert_checkpoint_heads"),
                row["id"], [h.job_id for h in heads], [h.event_id for h in heads],
                [h.seq for h in heads], [h.hash for h in heads],
            )  # fmt: skip
            return checkpoint_from_row(row)

    async def checkpoints(self, *, after: int, limit: int) -> list[Checkpoint]:
        rows = await self.db.fetch("audit_checkpoints_page", after, limit)
        return [checkpoint_from_row(row) for row in rows]

    async def checkpoint_heads(self, checkpoint_id: int) -> list[Head]:
        return [_head(row) for row in await self.db.fetch("audit_checkpoint_heads", checkpoint_id)]

    async def heads_now(self, *, after: int, upto: int) -> list[Head]:
        """The head of every job with events in (after, upto] as the log is now."""
        return [_head(row) for row in await self.db.fetch("audit_heads_now", after, upto)]

    async def chain_rows(self, job_id: str | None) -> AsyncIterator[ChainRow]:
        """Every job (or one) with its events and seals, in chain order, streamed."""
        async with self.db.connection() as conn, conn.transaction(isolation="repeatable_read"):
            async for row in stream(conn, "audit_chain_rows", job_id):
                event = None
                if row["id"] is not None:
                    event = event_from_row(row)
                sealed_as = (row["seal_job_id"], row["seal_seq"]) if row["seal_job_id"] else None
                yield ChainRow(
                    job_id=row["chain_job_id"], job_last_seq=row["chain_last_seq"],
                    event=event, sealed_as=sealed_as,
                )  # fmt: skip

    async def sealed_events(
        self, *, since: datetime | None, until: datetime | None, job_id: str | None
    ) -> AsyncGenerator[Event, None]:
        """The sealed events created in [since, until) (of one job or all), in id order, each
        with its prev_hash and hash; streamed from one snapshot."""
        async with self.db.connection() as conn, conn.transaction(isolation="repeatable_read"):
            async for row in stream(conn, "audit_export_events", since, until, job_id):
                yield event_from_row(row)

    async def unsealed_count(
        self, *, since: datetime | None, until: datetime | None, job_id: str | None
    ) -> int:
        return int(await self.db.fetchval("audit_unsealed_count", since, until, job_id))

    async def orphan_seals(self, job_id: str | None) -> list[OrphanSeal]:
        rows = await self.db.fetch("audit_orphan_seals", job_id)
        return [OrphanSeal(row["event_id"], row["job_id"], row["seq"]) for row in rows]

    async def orphan_event(self) -> OrphanSeal | None:
        """An event whose job row is gone, if any."""
        row = await self.db.fetchrow("audit_orphan_events")
        return OrphanSeal(row["id"], row["job_id"], row["seq"]) if row else None
