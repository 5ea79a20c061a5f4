"""`python -m service audit verify | keygen`: what an auditor runs."""

from __future__ import annotations

import argparse
import sys

from service.audit.signing import CheckpointSigner, new_signing_key
from service.audit.verify import verify_all
from service.db.database import Database
from service.errors import DatabaseUnavailable
from service.store.audit import AuditLog


def _kept_checkpoints(values: list[str]) -> dict[int, str]:
    kept: dict[int, str] = {}
    for value in values:
        checkpoint_id, _, digest = value.partition("=")
        if not checkpoint_id.isdigit() or len(digest) != 64:
            raise SystemExit(f"--checkpoint {value!r}: expected ID=DIGEST (64 hex characters)")
        kept[int(checkpoint_id)] = digest.lower()
    return kept


async def verify(dsn: str, args: argparse.Namespace) -> int:
    kept = _kept_checkpoints(args.checkpoint)
    try:
        db = await Database.open(dsn, min_size=1, max_size=2)
    except DatabaseUnavailable:
        print("audit: cannot reach the database (DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        log = AuditLog(db)
        if not await log.exists():
            print(
                "audit: this database holds no job log (not migrated: `python -m service "
                "migrate`, or DATABASE_URL names another database)",
                file=sys.stderr,
            )
            return 2
        report = await verify_all(log, job_id=args.job, kept=kept, public_key=args.public_key)
    finally:
        await db.close()
    scope = f"job {args.job}" if args.job else "the whole log"
    if args.job and report.jobs == 0:
        print(f"audit: no job {args.job}", file=sys.stderr)
        return 1
    if not report.holds:
        first = report.failures[0]
        where = f"event {first.event_id}" if first.event_id is not None else "the log"
        if first.checkpoint_id is not None and first.event_id is None:
            where = f"checkpoint {first.checkpoint_id}"
        print(
            f"audit FAILED ({scope}): {where} (job {first.job_id}, seq {first.seq}): {first.reason}"
        )
        for other in report.failures[1:]:
            print(f"  also: event {other.event_id} (job {other.job_id}, seq {other.seq}): "
                  f"{other.reason}")  # fmt: skip
        return 1
    print(
        f"audit ok ({scope}): {report.jobs} jobs, {report.events} events "
        f"({report.unsealed} not sealed yet), {report.checkpoints} checkpoints hold"
    )
    return 0


def keygen() -> int:
    key = new_signing_key()
    print(f"AUDIT_SIGNING_KEY={key}")
    print(f"public key: {CheckpointSigner(key).public_key}")
    return 0
