"""`python -m service webhooks recover|retry`: client webhook recovery from a shell, the same
as the API's (service.store.outbox), recorded with `via: cli`."""

from __future__ import annotations

import argparse

from schemas.common import format_timestamp
from service.cli import OK, CliError, open_database
from service.store.outbox import WebhookOutbox


async def run(dsn: str, args: argparse.Namespace, *, pooled: bool) -> int:
    async with open_database(dsn, pooled=pooled) as db:
        outbox = WebhookOutbox(db)
        if args.webhooks_command == "recover":
            requeued = await outbox.recover(args.since, via="cli")
            print(
                f"requeued {len(requeued)} deliveries that ended failed since "
                f"{format_timestamp(args.since)}"
            )
            for job_id, webhook_id in requeued:
                print(f"{webhook_id}  {job_id}")
            return OK
        result = await outbox.retry(args.job_id, args.webhook_id, via="cli")
        if result.outcome == "not_found":
            raise CliError(f"no webhook {args.webhook_id} of job {args.job_id}")
        if result.outcome == "in_flight":
            raise CliError(f"an attempt of {args.webhook_id} is under way: try again once it ends")
        print(f"requeued {args.webhook_id} of job {args.job_id}: one more attempt now")
        return OK
