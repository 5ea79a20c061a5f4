"""`python -m service jobs list|show|events|cancel`."""

from __future__ import annotations

import argparse
import sys

import orjson

from schemas.common import format_timestamp
from schemas.events import Event
from schemas.jobs import Job
from service.cli import OK, CliError, open_database
from service.store.postgres import PostgresJobStore

_JSON = orjson.OPT_INDENT_2


def _line(job: Job) -> str:
    return (
        f"{job.id}  {job.status.value:<9}  {job.provider:<8}  {job.model}  "
        f"{format_timestamp(job.created_at)}"
    )


def _event_line(event: Event) -> str:
    change = f"{event.from_status or '-'} -> {event.to_status}" if event.to_status else ""
    data = orjson.dumps(event.data).decode() if event.data else ""
    return "  ".join(
        part
        for part in (
            f"{event.seq:>3}", format_timestamp(event.created_at), event.type, change,
            event.source, data,
        )
        if part
    )  # fmt: skip


async def run(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    async with open_database(dsn, pooled=pooled) as db:
        store = PostgresJobStore(db)
        try:
            return await _run(store, args)
        finally:
            await store.close()


async def _run(store: PostgresJobStore, args: argparse.Namespace) -> int:
    command = args.jobs_command
    if command == "list":
        jobs, more = await store.list_jobs(
            provider=args.provider, status=args.status, limit=args.limit,
            before_id=args.before, search=args.search,
        )  # fmt: skip
        for job in jobs:
            print(orjson.dumps(job.body()).decode() if args.json else _line(job))
        if more:  # on stderr, so that stdout pipes as it is
            print(f"(more: --before {more})", file=sys.stderr)
        return OK
    if command == "show":
        found = await store.get_job(args.job_id)
        if found is None:
            raise CliError(f"no job {args.job_id}")
        print(orjson.dumps(found.body(), option=_JSON).decode())
        return OK
    if command == "events":
        events = await store.list_events(args.job_id)
        if not events and not await store.job_exists(args.job_id):
            raise CliError(f"no job {args.job_id}")
        for event in events:
            print(
                orjson.dumps(event.model_dump(mode="json")).decode()
                if args.json
                else _event_line(event)
            )
        return OK
    result = await store.request_cancel(args.job_id)
    if result.outcome == "not_found" or result.job is None:
        raise CliError(f"no job {args.job_id}")
    if result.outcome == "finished":
        raise CliError(f"job {args.job_id} is already {result.job.status.value}: not canceled")
    said = {
        "requested": "cancel requested (the service asks the provider)",
        "already_requested": "cancel already requested",
        "canceled": "canceled (it had not been sent to a provider)",
    }[result.outcome]
    print(f"job {args.job_id}: {said}; status {result.job.status.value}")
    return OK
