"""Operators' commands: `python -m service jobs list|show|events|cancel`, `webhooks
recover|retry` and `audit export` (beside `audit verify`, service.audit.cli).

They talk to the database of DATABASE_URL (read through Settings; unset: the embedded PostgreSQL
under SERVICE_DATA_DIR, shared with a running `make run`, as for `audit verify`) with the
service's own store and named queries. Exit codes: 0 done, 1 failed or not found (the database
unreachable or not migrated included), 2 usage (argparse's own)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from schemas.jobs import PROVIDERS, JobStatus
from service.db.database import Database
from service.errors import DatabaseUnavailable
from service.store.audit import AuditLog

OK, FAILED, USAGE = 0, 1, 2


class CliError(Exception):
    """Ends a command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def rfc3339(value: str) -> datetime:
    """An argparse type: an RFC 3339 time with its offset (`Z` or `+01:00`)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an RFC 3339 time (like 2026-12-01T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no offset: add Z (UTC) or +HH:MM, like 2026-12-01T10:00:00Z"
        )
    return parsed


@asynccontextmanager
async def open_database(dsn: str, *, pooled: bool) -> AsyncIterator[Database]:
    """The service's database, migrated; a clear CliError otherwise. `pooled`: see
    Settings.database_pooled."""
    try:
        db = await Database.open(dsn, pooled=pooled, min_size=1, max_size=2)
    except DatabaseUnavailable:
        raise CliError("cannot reach the database (DATABASE_URL)") from None
    try:
        if not await AuditLog(db).exists():
            raise CliError(
                "this database holds no jobs (not migrated: `python -m service migrate`, or "
                "DATABASE_URL names another database)"
            )
        yield db
    except DatabaseUnavailable:
        raise CliError("lost the database (DATABASE_URL) during the command") from None
    finally:
        await db.close()


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `jobs` and `webhooks` command groups."""
    jobs = commands.add_parser(
        "jobs", help="list, show, follow the history of, or cancel jobs",
        description="Jobs in the database of DATABASE_URL (unset: the embedded one). Exit 0 done, 1 failed or not found, "
        "2 usage.",
    )  # fmt: skip
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="command")
    listing = job_commands.add_parser(
        "list", help="jobs, newest first",
        description="Jobs, newest first: one line each (id, status, provider, model, created), "
        "or --json (one job object per line, as the API returns it).",
    )  # fmt: skip
    listing.add_argument("--provider", choices=PROVIDERS)
    listing.add_argument("--status", choices=[s.value for s in JobStatus])
    listing.add_argument("--search", "-q", metavar="TEXT", help="a job id, or text in the metadata")
    listing.add_argument("--limit", type=_limit, default=20, help="1 to 200 (default 20)")
    listing.add_argument("--before", metavar="JOB_ID", help="the page after this job id")
    listing.add_argument("--json", action="store_true", help="JSON Lines of job objects")
    show = job_commands.add_parser(
        "show", help="one job as the API returns it (JSON)",
        description="Prints the job as GET /v1/jobs/{id} returns it; exit 1 when there is none.",
    )  # fmt: skip
    show.add_argument("job_id", metavar="JOB_ID")
    events = job_commands.add_parser(
        "events", help="a job's audit trail",
        description="The job's events in order: one line each (seq, time, type, status change, "
        "source, data), or --json (one event object per line, with prev_hash and hash).",
    )  # fmt: skip
    events.add_argument("job_id", metavar="JOB_ID")
    events.add_argument("--json", action="store_true", help="JSON Lines of event objects")
    cancel = job_commands.add_parser(
        "cancel", help="cancel a job (as POST /v1/jobs/{id}/cancel)",
        description="Records the cancellation (event cancel_requested, source api); a running "
        "service then asks the provider. Exit 1 when the job is unknown or already finished.",
    )  # fmt: skip
    cancel.add_argument("job_id", metavar="JOB_ID")

    webhooks = commands.add_parser(
        "webhooks", help="recover or retry client webhooks",
        description="Client webhook deliveries in the database of DATABASE_URL; every running "
        "instance's deliverer is woken at once. Exit 0 done, 1 failed or not found, 2 usage.",
    )  # fmt: skip
    hook_commands = webhooks.add_subparsers(
        dest="webhooks_command", required=True, metavar="command"
    )
    recover = hook_commands.add_parser(
        "recover", help="attempt again every delivery that ended failed since a time",
        description="As POST /v1/webhooks/recover: every delivery that ended failed at or after "
        "--since gets one more attempt now, with its original webhook-id and body, recorded as "
        "the job's event webhook_retry_requested. Prints how many, then each webhook id.",
    )  # fmt: skip
    recover.add_argument(
        "--since", type=rfc3339, required=True, metavar="TIME",
        help="RFC 3339 with an offset, like 2026-12-01T10:00:00Z",
    )  # fmt: skip
    retry = hook_commands.add_parser(
        "retry", help="one more attempt of one delivery, now",
        description="As POST /v1/jobs/{id}/webhooks/{webhook_id}/retry. Exit 1 when the job or "
        "webhook is unknown, or an attempt of it is under way.",
    )  # fmt: skip
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("webhook_id", metavar="WEBHOOK_ID", help="like msg_1042")


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 1 <= number <= 200:
        raise argparse.ArgumentTypeError("must be between 1 and 200")
    return number


def run(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    """Runs one command of the `jobs` or `webhooks` groups on the database of `dsn`."""
    import asyncio

    from service.cli import jobs, webhooks

    if args.command == "jobs":
        work = jobs.run(dsn, args, pooled=pooled)
    else:
        work = webhooks.run(dsn, args, pooled=pooled)
    try:
        return asyncio.run(work)
    except CliError as exc:
        print(f"{args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return quiet_broken_pipe()


def quiet_broken_pipe() -> int:
    """The reader of stdout stopped (`| head`): it had enough. No traceback, and none either
    when Python flushes stdout at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return OK
