"""`python -m service audit verify | export | keygen`: what an auditor runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import IO

from service.audit.export import verify_lines, write_export
from service.audit.signing import CheckpointSigner, new_signing_key
from service.audit.verify import verify_all
from service.db.database import Database
from service.errors import DatabaseUnavailable
from service.store.audit import AuditLog


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from service.cli import rfc3339

    audit_parser = commands.add_parser("audit", help="the audit chain: verify, export, keygen")
    audit_commands = audit_parser.add_subparsers(
        dest="audit_command", required=True, metavar="command"
    )
    verify = audit_commands.add_parser(
        "verify",
        help="recompute every chain and checkpoint from the database (or an export): exit 0 "
        "when all hold, 1 naming the first event or checkpoint that does not",
        description="Recomputes every chain and checkpoint from the database (DATABASE_URL), or "
        "with --file the chains of an export, offline. Exit 0 when all hold, 1 naming the first "
        "event or checkpoint that does not, 2 when it cannot check (database unreachable or not "
        "migrated, file unreadable, usage).",
    )
    verify.add_argument("--job", metavar="ID", help="verify this job's chain only")
    verify.add_argument(
        "--checkpoint", metavar="ID=DIGEST", action="append", default=[],
        help="a checkpoint kept outside the database: its digest must be unchanged (repeatable)",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", metavar="BASE64",
        help="every checkpoint must be signed with this Ed25519 public key",
    )  # fmt: skip
    verify.add_argument(
        "--file", metavar="EXPORT", type=Path,
        help="check a file written by `audit export` instead of the database (no database needed)",
    )  # fmt: skip
    export = audit_commands.add_parser(
        "export",
        help="JSON Lines of the sealed events of a time range, with prev_hash and hash",
        description="Writes the sealed events created in [--since, --until) (all when omitted), "
        "in id order, one event object per line exactly as the API returns it, with prev_hash "
        "and hash; `audit verify --file` checks it offline. Exit 0 done, 1 failed, 2 usage.",
    )
    export.add_argument("--since", type=rfc3339, metavar="TIME", help="RFC 3339, inclusive")
    export.add_argument("--until", type=rfc3339, metavar="TIME", help="RFC 3339, exclusive")
    export.add_argument("--job", metavar="ID", help="this job's events only")
    export.add_argument(
        "--output", "-o", metavar="FILE", type=Path, help="write there (default: stdout)"
    )
    audit_commands.add_parser("keygen", help="print a new AUDIT_SIGNING_KEY and its public key")


def _kept_checkpoints(values: list[str]) -> dict[int, str]:
    kept: dict[int, str] = {}
    for value in values:
        checkpoint_id, _, digest = value.partition("=")
        if not checkpoint_id.isdigit() or len(digest) != 64:
            raise SystemExit(f"--checkpoint {value!r}: expected ID=DIGEST (64 hex characters)")
        kept[int(checkpoint_id)] = digest.lower()
    return kept


async def verify(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    kept = _kept_checkpoints(args.checkpoint)
    try:
        db = await Database.open(dsn, pooled=pooled, min_size=1, max_size=2)
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


def export(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    from service.cli import CliError, quiet_broken_pipe

    try:
        return asyncio.run(_export(dsn, args, pooled=pooled))
    except CliError as exc:
        print(f"audit: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return quiet_broken_pipe()


async def _export(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    from service.cli import open_database

    scope = {"since": args.since, "until": args.until, "job_id": args.job}
    async with open_database(dsn, pooled=pooled) as db:
        log = AuditLog(db)
        with contextlib.ExitStack() as files:
            out: IO[bytes] = (
                files.enter_context(args.output.open("wb")) if args.output else sys.stdout.buffer
            )
            sealed = log.sealed_events(**scope)
            try:
                events, jobs = await write_export(sealed, out)
                out.flush()
            finally:
                await sealed.aclose()  # its connection back to the pool, even on a broken pipe
        unsealed = await log.unsealed_count(**scope)
    where = f" to {args.output}" if args.output else ""
    note = f"; {unsealed} not sealed yet, left out" if unsealed else ""
    print(f"audit: exported {events} events of {jobs} jobs{where}{note}", file=sys.stderr)
    return 0


def verify_file(path: Path) -> int:
    """Checks an export offline: 0 when every line holds, 1 naming the first that does not."""
    try:
        with path.open("rb") as lines:
            report = verify_lines(lines)
    except OSError as exc:
        print(f"audit: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    if not report.holds:
        print(f"audit FAILED ({path}): {report.failure}")
        return 1
    mid = len(report.mid_chain)
    print(
        f"audit ok ({path}): {report.jobs} jobs, {report.events} events hold"
        + (f" ({mid} jobs start before the range: their first prev_hash links outside it)"
           if mid else "")
    )  # fmt: skip
    return 0
