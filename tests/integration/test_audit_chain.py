"""The audit chain on a real PostgreSQL: sealing, checkpoints, and `python -m service audit
verify` catching every tampering a superuser can do with triggers disabled (edit, delete, swap,
remove a job's last event, remove a whole job), each run as the real command line."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from schemas.jobs import JobCreate, JobOutput, JobStatus
from service.audit.signing import CheckpointSigner, new_signing_key, signature_holds
from service.audit.verify import verify_all, verify_job
from service.db.database import Database
from service.providers.base import Observation
from service.store.audit import AuditLog
from service.store.postgres import PostgresJobStore
from tests.conftest import REPO, dsn_with_database

S = JobStatus


def request(n: int) -> JobCreate:
    return JobCreate.model_validate({
        "provider": "fal", "model": "fal-ai/flux/krea",
        "input": {"prompt": f"lighthouse {n}", "seed": 2**60 + n, "guidance_scale": 4.5},
        "metadata": {"n": n},
    })  # fmt: skip


async def make_job(store: PostgresJobStore, n: int) -> str:
    """A job with five events: accepted, submitted, running, an ignored duplicate, succeeded."""
    job_id = (await store.create_job(request(n), idempotency_key=None)).job.id
    await store.apply_observation(
        job_id, Observation(S.SUBMITTED, provider_job_id=f"req-{n}", data={"ratio": 0.1}),
        source="system",
    )  # fmt: skip
    await store.apply_observation(job_id, Observation(S.RUNNING, "IN_PROGRESS"), source="webhook")
    await store.apply_observation(
        job_id, Observation(S.RUNNING, "IN_PROGRESS"), source="poll", record_ignored=True
    )
    outputs = [JobOutput(url=f"https://cdn.example/{n}.png", width=1024, height=768)]
    await store.apply_observation(
        job_id, Observation(S.SUCCEEDED, "COMPLETED", outputs=outputs), source="webhook"
    )
    return job_id


@dataclass
class Log:
    database_url: str
    db: Database
    store: PostgresJobStore
    audit: AuditLog
    jobs: list[str]

    async def seal_and_checkpoint(self, signer: CheckpointSigner | None = None) -> None:
        while await self.audit.seal(limit=7):
            pass
        await self.audit.checkpoint(signer)

    async def tamper(self, *statements: str) -> None:
        """As a superuser would: triggers (append-only, foreign keys) disabled."""
        conn = await asyncpg.connect(self.database_url)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                for statement in statements:
                    await conn.execute(statement)
        finally:
            await conn.close()

    async def event_id(self, job: int, seq: int) -> int:
        async with self.db.connection() as conn:
            value: int = await conn.fetchval(
                "SELECT id FROM job_events WHERE job_id = $1 AND seq = $2", self.jobs[job], seq
            )
        return value


@pytest.fixture
async def log(database_url: str) -> AsyncIterator[Log]:
    db = await Database.open(database_url, min_size=1, max_size=4)
    store = PostgresJobStore(db)
    audit = AuditLog(db)
    jobs = [await make_job(store, n) for n in range(3)]
    yield Log(database_url, db, store, audit, jobs)
    await store.close()
    await db.close()


def as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def run_verify(database_url: str, *args: str) -> tuple[int, str]:
    """The real command line, as an auditor runs it."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "warning"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "audit", "verify", *args,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_an_untouched_log_verifies_and_the_command_says_so(log: Log) -> None:
    await log.seal_and_checkpoint()
    code, out = await run_verify(log.database_url)
    assert code == 0, out
    assert "3 jobs, 15 events (0 not sealed yet), 1 checkpoints hold" in out
    code, out = await run_verify(log.database_url, "--job", log.jobs[1])
    assert code == 0, out
    assert "1 jobs, 5 events" in out


async def test_verifying_a_database_without_the_log_says_so(empty_database: str) -> None:
    code, out = await run_verify(empty_database)
    assert code == 2
    assert "holds no job log" in out and "Traceback" not in out


async def test_each_event_is_sealed_once_chained_to_its_predecessor(log: Log) -> None:
    await log.seal_and_checkpoint()
    for job_id in log.jobs:
        events = await log.store.list_events(job_id)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[0].prev_hash is None
        for previous, event in itertools.pairwise(events):
            assert event.prev_hash == previous.hash is not None
    async with log.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM event_seals") == 15


async def test_concurrent_sealers_seal_each_event_once(log: Log) -> None:
    others = [AuditLog(log.db) for _ in range(4)]

    async def drain(audit: AuditLog) -> None:
        while (sealed := await audit.seal(limit=2)) != 0:
            if sealed is None:
                await asyncio.sleep(0)  # another sealer holds the lock: let it go on

    await asyncio.gather(*(drain(a) for a in others))
    report = await verify_all(log.audit)
    assert report.holds, report.failures
    assert (report.events, report.unsealed) == (15, 0)


async def test_an_edited_event_is_named(log: Log) -> None:
    await log.seal_and_checkpoint()
    target = await log.event_id(1, 3)
    await log.tamper(
        f'UPDATE job_events SET data = data || \'{{"provider_status": "FORGED"}}\' WHERE id = {target}'
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"event {target} (job {log.jobs[1]}, seq 3)" in out
    assert "edited" in out
    audit = await verify_job(log.audit, log.jobs[1])
    assert audit is not None and audit.status == "failed"
    assert audit.failure is not None and audit.failure.event_id == target


async def test_a_removed_event_is_named(log: Log) -> None:
    await log.seal_and_checkpoint()
    target = await log.event_id(0, 2)
    await log.tamper(f"DELETE FROM job_events WHERE id = {target}")
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"(job {log.jobs[0]}, seq 3)" in out and "seq 2 is missing" in out


async def test_a_removed_event_and_its_seal_with_the_seqs_renumbered_is_caught(log: Log) -> None:
    await log.seal_and_checkpoint()
    target = await log.event_id(0, 2)
    job = log.jobs[0]
    await log.tamper(
        f"DELETE FROM event_seals WHERE event_id = {target}",
        f"DELETE FROM job_events WHERE id = {target}",
        f"UPDATE job_events SET seq = seq - 1 WHERE job_id = '{job}' AND seq > 2",
        f"UPDATE jobs SET last_seq = 4 WHERE id = '{job}'",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"(job {job}, seq 2)" in out


async def test_two_swapped_events_are_caught(log: Log) -> None:
    await log.seal_and_checkpoint()
    first, second = await log.event_id(2, 2), await log.event_id(2, 3)
    job = log.jobs[2]
    await log.tamper(
        f"UPDATE job_events SET seq = -1 WHERE id = {first}",
        f"UPDATE job_events SET seq = 2 WHERE id = {second}",
        f"UPDATE job_events SET seq = 3 WHERE id = {first}",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"event {second} (job {job}, seq 2)" in out


async def test_a_removed_last_event_is_caught_by_the_job_row(log: Log) -> None:
    await log.seal_and_checkpoint()
    target = await log.event_id(1, 5)
    await log.tamper(
        f"DELETE FROM event_seals WHERE event_id = {target}",
        f"DELETE FROM job_events WHERE id = {target}",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"job {log.jobs[1]}" in out and "its last events were removed" in out


async def test_a_removed_last_event_covered_up_in_the_job_row_is_caught_by_the_checkpoint(
    log: Log,
) -> None:
    await log.seal_and_checkpoint()
    target = await log.event_id(1, 5)
    job = log.jobs[1]
    await log.tamper(
        f"DELETE FROM event_seals WHERE event_id = {target}",
        f"DELETE FROM job_events WHERE id = {target}",
        f"UPDATE jobs SET last_seq = 4, status = 'running' WHERE id = '{job}'",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"event {target} (job {job}, seq 5)" in out and "checkpoint 1" in out


async def test_a_removed_job_is_caught_by_the_checkpoint(log: Log) -> None:
    await log.seal_and_checkpoint()
    job = log.jobs[0]
    last = await log.event_id(0, 5)
    await log.tamper(
        f"DELETE FROM event_seals WHERE job_id = '{job}'",
        f"DELETE FROM job_events WHERE job_id = '{job}'",
        f"DELETE FROM jobs WHERE id = '{job}'",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1
    assert f"event {last} (job {job}, seq 5)" in out and "removed" in out


async def test_a_rewritten_chain_is_caught_by_a_kept_checkpoint(log: Log) -> None:
    """A superuser who removes a job and rebuilds every seal and checkpoint leaves a log that
    holds in itself; the digest an auditor kept proves the rewrite."""
    await log.seal_and_checkpoint()
    kept = (await log.audit.checkpoints(after=0, limit=1))[0]
    job = log.jobs[0]
    await log.tamper(
        "DELETE FROM audit_checkpoint_heads", "DELETE FROM audit_checkpoints",
        "DELETE FROM event_seals", f"DELETE FROM job_events WHERE job_id = '{job}'",
        f"DELETE FROM jobs WHERE id = '{job}'",
        "ALTER TABLE audit_checkpoints ALTER COLUMN id RESTART WITH 1",
    )  # fmt: skip
    await log.seal_and_checkpoint()
    code, out = await run_verify(log.database_url)
    assert code == 0, out  # consistent in itself...
    code, out = await run_verify(log.database_url, "--checkpoint", f"{kept.id}={kept.digest}")
    assert code == 1  # ...but not with what the auditor kept
    assert "checkpoint 1" in out and "differs from the kept one" in out


async def test_signed_checkpoints_verify_against_the_pinned_key_and_forgeries_do_not(
    log: Log,
) -> None:
    signer = CheckpointSigner(new_signing_key())
    await log.seal_and_checkpoint(signer)
    checkpoint = (await log.audit.checkpoints(after=0, limit=1))[0]
    assert checkpoint.public_key == signer.public_key and checkpoint.signature is not None
    assert signature_holds(
        public_key=signer.public_key, digest=checkpoint.digest, signature=checkpoint.signature
    )
    code, out = await run_verify(log.database_url, "--public-key", signer.public_key)
    assert code == 0, out
    forger = CheckpointSigner(new_signing_key())
    code, out = await run_verify(log.database_url, "--public-key", forger.public_key)
    assert code == 1 and "pinned public key" in out
    bad = base64.b64encode(b"\0" * 64).decode()
    await log.tamper(f"UPDATE audit_checkpoints SET signature = '{bad}'")
    code, out = await run_verify(log.database_url)
    assert code == 1 and "signature does not hold" in out


async def test_checkpoints_chain_and_cover_only_the_jobs_that_changed(log: Log) -> None:
    await log.seal_and_checkpoint()
    await log.store.apply_observation(
        log.jobs[2], Observation(S.RUNNING, "IN_PROGRESS"), source="poll", record_ignored=True
    )
    await log.seal_and_checkpoint()
    first, second = await log.audit.checkpoints(after=0, limit=10)
    assert first.prev_digest is None and second.prev_digest == first.digest
    assert (first.heads, second.heads) == (3, 1)
    heads = await log.audit.checkpoint_heads(second.id)
    assert [h.job_id for h in heads] == [log.jobs[2]] and heads[0].seq == 6
    assert (await verify_all(log.audit)).holds


async def test_an_unsealed_tail_is_pending_and_an_inserted_event_is_caught(log: Log) -> None:
    await log.seal_and_checkpoint()
    job = log.jobs[0]
    await log.store.apply_observation(
        job, Observation(S.RUNNING, "IN_PROGRESS"), source="poll", record_ignored=True
    )
    audit = await verify_job(log.audit, job)
    assert audit is not None and (audit.status, audit.events, audit.sealed) == ("pending", 6, 5)
    await log.audit.seal()
    audit = await verify_job(log.audit, job)
    assert audit is not None and audit.status == "verified"
    # An event slipped in under the sealed ones (a low id the sealer will never reach).
    await log.tamper(
        f"UPDATE job_events SET seq = -seq WHERE job_id = '{job}' AND seq >= 3",
        f"UPDATE job_events SET seq = 1 - seq WHERE job_id = '{job}' AND seq < 0",
        "INSERT INTO job_events (id, job_id, seq, type, source, data) OVERRIDING SYSTEM VALUE "
        f"VALUES (0, '{job}', 3, 'observation_ignored', 'poll', '{{}}')",
        f"UPDATE jobs SET last_seq = 7 WHERE id = '{job}'",
    )
    code, out = await run_verify(log.database_url)
    assert code == 1 and f"job {job}" in out


async def test_a_read_only_auditor_role_can_verify(log: Log, pg_server_dsn: str) -> None:
    """The README's SQL for an auditor's role, run as written: it can verify and not write."""
    await log.seal_and_checkpoint()
    database = urlsplit(log.database_url).path.lstrip("/")
    role = f"auditor_{database[-12:]}"
    readme = (REPO / "README.md").read_text()
    sql = readme.split("```sql\n-- auditor role\n", 1)[1].split("```", 1)[0]
    sql = sql.replace("imagejobs", database).replace("auditor", role)
    conn = await asyncpg.connect(log.database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    auditor_dsn = as_user(dsn_with_database(pg_server_dsn, database), role, "change-me")
    try:
        code, out = await run_verify(auditor_dsn)
        assert code == 0, out
        auditor = await asyncpg.connect(auditor_dsn)
        try:
            with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                await auditor.execute("DELETE FROM event_seals")
            # Read-only is only the role's default: the grants are what stop it.
            await auditor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await auditor.execute("DELETE FROM event_seals")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await auditor.execute("UPDATE jobs SET status = 'failed'")
        finally:
            await auditor.close()
    finally:
        conn = await asyncpg.connect(log.database_url)
        try:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        finally:
            await conn.close()
