"""The operators' command line, run as a user runs it (`python -m service ...` in a subprocess,
DATABASE_URL in its environment) against a real PostgreSQL: jobs list|show|events|cancel,
webhooks recover|retry, audit export and audit verify --file; their outputs and exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import rfc8785

from schemas.jobs import JobCreate
from service.store.outbox import WebhookOutbox
from tests.conftest import REPO
from tests.integration import test_audit_chain as chain
from tests.integration.test_audit_chain import Log

log = chain.log  # three succeeded jobs of five events each (the audit chain's fixture)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(database_url: str | None, *args: str, listen_url: str | None = None) -> Ran:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_LISTEN_URL")}
    env["LOG_LEVEL"] = "warning"
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if listen_url is not None:
        env["DATABASE_LISTEN_URL"] = listen_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def test_jobs_list_show_and_events(log: Log) -> None:
    ran = await cli(log.database_url, "jobs", "list")
    assert ran.code == 0, ran.err
    newest_first = list(reversed(log.jobs))
    assert [line.split()[0] for line in ran.lines()] == newest_first
    assert all(line.split()[1:3] == ["succeeded", "fal"] for line in ran.lines())

    ran = await cli(log.database_url, "jobs", "list", "--limit", "2")
    assert ran.lines()[:2] == [
        line for line in (await cli(log.database_url, "jobs", "list")).lines()[:2]
    ]
    assert len(ran.lines()) == 2
    assert ran.err.strip() == f"(more: --before {newest_first[1]})"
    ran = await cli(log.database_url, "jobs", "list", "--before", newest_first[1], "--json")
    assert [orjson.loads(line)["id"] for line in ran.lines()] == [newest_first[2]]
    ran = await cli(log.database_url, "jobs", "list", "--status", "running")
    assert (ran.code, ran.out) == (0, "")

    ran = await cli(log.database_url, "jobs", "show", log.jobs[0])
    assert ran.code == 0
    job = await log.store.get_job(log.jobs[0])
    assert job is not None
    assert orjson.loads(ran.out) == orjson.loads(orjson.dumps(job.body()))

    ran = await cli(log.database_url, "jobs", "events", log.jobs[0])
    assert ran.code == 0
    assert len(ran.lines()) == 5
    assert ran.lines()[0].split()[:5] == [
        "1",
        ran.lines()[0].split()[1],
        "status_changed",
        "-",
        "->",
    ]
    assert "running -> succeeded" in ran.lines()[4]
    ran = await cli(log.database_url, "jobs", "events", log.jobs[0], "--json")
    events = [orjson.loads(line) for line in ran.lines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    api = [e.model_dump(mode="json") for e in await log.store.list_events(log.jobs[0])]
    assert events == orjson.loads(orjson.dumps(api))


async def test_unknown_jobs_are_exit_1_and_usage_errors_exit_2(log: Log) -> None:
    unknown = "job_01JAAAAAAAAAAAAAAAAAAAAAAA"
    for command in ("show", "events", "cancel"):
        ran = await cli(log.database_url, "jobs", command, unknown)
        assert ran.code == 1
        assert ran.out == ""
        assert ran.err.strip() == f"jobs: no job {unknown}"
    for args in (["jobs"], ["jobs", "list", "--limit", "0"], ["jobs", "list", "--status", "x"],
                 ["jobs", "show"], ["webhooks", "recover"],
                 ["webhooks", "recover", "--since", "2026-12-01T10:00:00"],
                 ["audit", "export", "--since", "yesterday"]):  # fmt: skip
        ran = await cli(log.database_url, *args)
        assert ran.code == 2, args
        assert "usage:" in ran.err
    ran = await cli("postgresql://nobody@127.0.0.1:9/none", "jobs", "list")
    assert ran.code == 1
    assert ran.err.strip() == "jobs: cannot reach the database (DATABASE_URL)"


async def test_a_database_without_the_service_is_exit_1(empty_database: str) -> None:
    for args in (["jobs", "list"], ["webhooks", "recover", "--since", "2026-12-01T00:00:00Z"],
                 ["audit", "export"]):  # fmt: skip
        ran = await cli(empty_database, *args)
        assert ran.code == 1, args
        assert "this database holds no jobs (not migrated" in ran.err
        assert ran.out == ""


async def test_every_command_has_help(log: Log) -> None:
    for args in (["jobs"], ["jobs", "list"], ["jobs", "show"], ["jobs", "events"],
                 ["jobs", "cancel"], ["webhooks"], ["webhooks", "recover"], ["webhooks", "retry"],
                 ["audit"], ["audit", "verify"], ["audit", "export"]):  # fmt: skip
        ran = await cli(None, *args, "--help")
        assert ran.code == 0, args
        assert ran.out.startswith(f"usage: python -m service {' '.join(args)}")


async def test_jobs_cancel(log: Log) -> None:
    ran = await cli(log.database_url, "jobs", "cancel", log.jobs[0])
    assert ran.code == 1
    assert ran.err.strip() == f"jobs: job {log.jobs[0]} is already succeeded: not canceled"
    fresh = (await log.store.create_job(chain.request(9), idempotency_key=None)).job.id
    ran = await cli(log.database_url, "jobs", "cancel", fresh)
    assert ran.code == 0, ran.err
    assert ran.out.strip() == (
        f"job {fresh}: canceled (it had not been sent to a provider); status canceled"
    )
    events = await log.store.list_events(fresh)
    assert [(e.type, e.source) for e in events][-2:] == [
        ("cancel_requested", "api"),
        ("status_changed", "api"),
    ]


async def failed_delivery(log: Log, n: int) -> tuple[str, str]:
    """A job with a webhook_url whose delivery (of `job.accepted`) ended failed."""
    create = JobCreate.model_validate(
        {**chain.request(n).model_dump(), "webhook_url": f"https://client.example/{n}"}
    )
    job_id = (await log.store.create_job(create, idempotency_key=None)).job.id
    outbox = WebhookOutbox(log.db)
    claimed = await outbox.claim(owner="test", limit=10, lease_seconds=60)
    (delivery,) = [d for d in claimed if d.job_id == job_id]
    await outbox.record_attempt(
        delivery.id, owner="test", sent_at=datetime.now(UTC), duration_ms=1.0, status=503,
        error="http 503", outcome="failed", next_at=None,
    )  # fmt: skip
    (view,) = await outbox.deliveries_of(job_id)
    assert view.state == "failed"
    return job_id, view.webhook_id


async def test_webhooks_recover_and_retry(log: Log) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    failed = [await failed_delivery(log, n) for n in (10, 11)]
    woken = asyncio.Event()
    listener = await asyncpg.connect(log.database_url)
    await listener.add_listener("webhook_deliveries", lambda *_: woken.set())
    try:
        since = before.isoformat().replace("+00:00", "Z")
        ran = await cli(log.database_url, "webhooks", "recover", "--since", since)
        assert ran.code == 0, ran.err
        assert ran.lines()[0].startswith("requeued 2 deliveries that ended failed since ")
        assert sorted(ran.lines()[1:]) == sorted(f"{w}  {j}" for j, w in failed)
        await asyncio.wait_for(woken.wait(), 10)  # the deliverers are woken
    finally:
        await listener.close()
    outbox = WebhookOutbox(log.db)
    for job_id, webhook_id in failed:
        (view,) = await outbox.deliveries_of(job_id)
        assert (view.webhook_id, view.state) == (webhook_id, "pending")
        assert view.next_attempt_at is not None
        event = (await log.store.list_events(job_id))[-1]
        assert (event.type, event.source) == ("webhook_retry_requested", "api")
        assert event.data["webhook_id"] == webhook_id
        assert event.data["via"] == "cli"
    ran = await cli(log.database_url, "webhooks", "recover", "--since", since)
    assert ran.lines() == [f"requeued 0 deliveries that ended failed since {ran.lines()[0][-24:]}"]

    job_id, webhook_id = failed[0]
    ran = await cli(log.database_url, "webhooks", "retry", job_id, webhook_id)
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"requeued {webhook_id} of job {job_id}: one more attempt now"
    ran = await cli(log.database_url, "webhooks", "retry", job_id, "msg_999999")
    assert ran.code == 1
    assert ran.err.strip() == f"webhooks: no webhook msg_999999 of job {job_id}"


def offline_check(lines: list[bytes]) -> None:
    """What the README tells an auditor to run: only hashlib and rfc8785."""
    last: dict[str, dict[str, Any]] = {}
    for raw in lines:
        event = orjson.loads(raw)
        body = {k: v for k, v in event.items() if k != "hash"}
        assert hashlib.sha256(rfc8785.dumps(body)).hexdigest() == event["hash"]
        previous = last.get(event["job_id"])
        if previous is not None:
            assert event["seq"] == previous["seq"] + 1
            assert event["prev_hash"] == previous["hash"]
        elif event["seq"] == 1:
            assert event["prev_hash"] is None
        last[event["job_id"]] = event


async def test_audit_export_verifies_offline_and_tampering_is_named(
    log: Log, tmp_path: Path
) -> None:
    await log.seal_and_checkpoint()
    unsealed = (await log.store.create_job(chain.request(7), idempotency_key=None)).job.id
    export = tmp_path / "export.jsonl"
    ran = await cli(log.database_url, "audit", "export", "--output", str(export))
    assert ran.code == 0, ran.err
    assert ran.err.strip() == (
        f"audit: exported 15 events of 3 jobs to {export}; 1 not sealed yet, left out"
    )
    lines = export.read_bytes().splitlines()
    assert [orjson.loads(line)["job_id"] for line in lines].count(unsealed) == 0
    offline_check(lines)
    ran = await cli(None, "audit", "verify", "--file", str(export))  # no database at all
    assert (ran.code, ran.out.strip()) == (0, f"audit ok ({export}): 3 jobs, 15 events hold")

    # a time range: each job's events from its third on
    async with log.db.connection() as conn:
        third = await conn.fetchval(
            "SELECT created_at FROM job_events WHERE job_id = $1 AND seq = 3", log.jobs[0]
        )
    ranged = tmp_path / "ranged.jsonl"
    since = third.isoformat()
    ran = await cli(log.database_url, "audit", "export", "--since", since, "-o", str(ranged))
    assert ran.code == 0, ran.err
    ranged_lines = ranged.read_bytes().splitlines()
    assert orjson.loads(ranged_lines[0])["seq"] == 3
    offline_check(ranged_lines)
    ran = await cli(None, "audit", "verify", "--file", str(ranged))
    assert ran.code == 0
    assert "jobs start before the range" in ran.out
    ran = await cli(log.database_url, "audit", "export", "--job", log.jobs[1])
    assert [orjson.loads(line)["job_id"] for line in ran.lines()] == [log.jobs[1]] * 5

    def tampered(name: str, changed: list[bytes]) -> Path:
        path = tmp_path / name
        path.write_bytes(b"\n".join(changed) + b"\n")
        return path

    edited = [orjson.loads(line) for line in lines]
    edited[6]["data"]["ratio"] = 0.2
    removed = lines[:7] + lines[8:]
    swapped = [*lines[:5], lines[6], lines[5], *lines[7:]]
    for name, changed, reason in [
        ("edited", [orjson.dumps(e) for e in edited], "its content no longer matches its hash"),
        ("removed", removed, "seq 3 is missing before seq 4: an event was removed"),
        ("swapped", swapped, "its id is not above the previous line's"),
    ]:
        ran = await cli(None, "audit", "verify", "--file", str(tampered(name, changed)))
        assert ran.code == 1, name
        assert ran.out.startswith(f"audit FAILED ({tmp_path / name}): line ")
        assert reason in ran.out
    ran = await cli(None, "audit", "verify", "--file", str(tmp_path / "absent.jsonl"))
    assert ran.code == 2
