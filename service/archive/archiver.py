"""The archiver: claims outputs of succeeded jobs (by lease, SKIP LOCKED, so instances share the
work and a crashed instance's outputs are taken over when the lease runs out), streams each
from the provider into the output store under `{job_id}/{index}`, and records the outcome.

Each claim is one attempt. A failed attempt is tried again later (backoff with jitter) until
the attempts are used up or the provider's URL expires, then recorded once as
`output_archive_failed`; the job stays succeeded. Storing is idempotent (a deterministic key,
written whole or not at all) and recording happens once (the SQL function refuses a second
record), so an instance killed mid-download leaves nothing doubled: the next claim downloads
and stores the output again, and records it.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from service import tracing
from service.archive.fetch import FetchFailed, OutputFetcher
from service.archive.images import image_size
from service.archive.policy import next_attempt_at
from service.archive.storage import OutputStorage, StorageError
from service.archive.urls import expires_at, shown
from service.errors import DatabaseUnavailable
from service.logs import get_logger
from service.metrics import OUTPUTS_ARCHIVED
from service.store.archive import ArchivedOutput, ArchiveItem, ArchiveQueue
from service.workers.claim_loop import ClaimLoop

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue


def storage_key(job_id: str, index: int) -> str:
    """Where an output is kept: the same for every attempt, so a retry overwrites, never adds."""
    return f"{job_id}/{index}"


def _span_attributes(item: ArchiveItem) -> dict[str, AttributeValue]:
    """What the span of one attempt says of it: the job, the output, the attempt, and where the
    output is fetched from (scheme, host and port: the query of a signed URL is a secret)."""
    parts = urlsplit(item.url)
    return {
        "job.id": item.job_id, "output.index": item.index, "output.attempt": item.attempts,
        "url.scheme": parts.scheme, "server.address": parts.hostname or "",
    }  # fmt: skip


class OutputArchiver(ClaimLoop[ArchiveItem]):
    """Claims due outputs, at most `concurrency` in flight per instance."""

    def __init__(
        self,
        *,
        queue: ArchiveQueue,
        storage: OutputStorage,
        fetcher: OutputFetcher,
        lease_s: float,
        max_attempts: int,
        backoff_base_s: float,
        concurrency: int = 16,
        owner: str | None = None,
        idle_wait_s: float = 1.0,
    ) -> None:
        super().__init__(
            name="archive",
            batch_size=concurrency,
            idle_wait_s=idle_wait_s,
            log=get_logger("service.archive"),
        )
        self.queue = queue
        self.storage = storage
        self.fetcher = fetcher
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.owner = owner or f"archiver-{secrets.token_hex(6)}"
        self._in_flight = 0

    async def claim(self) -> list[ArchiveItem]:
        room = self.batch_size - self._in_flight
        if room <= 0:
            return []
        items = await self.queue.claim(owner=self.owner, limit=room, lease_seconds=self.lease_s)
        self._in_flight += len(items)
        return items

    async def next_due(self) -> datetime | None:
        if self._in_flight >= self.batch_size:
            return None  # full: a finishing download wakes the loop
        return await self.queue.next_due_at()

    async def close(self) -> None:
        await super().close()
        await self.fetcher.aclose()

    async def handle(self, item: ArchiveItem) -> None:
        try:
            with tracing.span(
                "output.archive", parent=item.traceparent, attributes=_span_attributes(item)
            ):
                await self.archive(item)
        except DatabaseUnavailable:
            # Nothing recorded: the lease runs out and the output is claimed again.
            self._log.warning(
                "archive_record_deferred_database_unavailable", job_id=item.job_id, index=item.index
            )
        except Exception:
            self._log.exception("archive_crashed", job_id=item.job_id, index=item.index)
        finally:
            self._in_flight -= 1
            self.wake()

    async def archive(self, item: ArchiveItem) -> None:
        """One attempt at one output, and its record."""
        expiry = expires_at(item.url)
        try:
            if expiry is not None and expiry <= datetime.now(UTC):
                raise FetchFailed(
                    "url_expired",
                    f"{shown(item.url)} expired at {expiry.isoformat()} before it could be fetched",
                    retryable=False,
                )
            # Bounded below the lease, so that no other archiver takes the output over while
            # this attempt may still store it.
            async with asyncio.timeout(self.lease_s * 0.9):
                output = await self._store(item)
        except FetchFailed as failure:
            await self._failed(item, failure, expiry)
            return
        except (StorageError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, StorageError) else "the attempt timed out"
            await self._failed(item, FetchFailed("store_failed", reason, retryable=True), expiry)
            return
        recorded, all_archived = await self.queue.record_archived(
            item, owner=self.owner, output=output
        )
        tracing.annotate({
            "archive.outcome": "archived" if recorded else "not_recorded",
            "output.bytes": output.bytes,
        })  # fmt: skip
        if recorded:
            OUTPUTS_ARCHIVED.labels(outcome="archived").inc()
        self._log.info(
            "output_archived" if recorded else "output_archive_not_recorded",
            job_id=item.job_id, index=item.index, bytes=output.bytes, attempt=item.attempts,
            all_archived=all_archived,
        )  # fmt: skip

    async def _store(self, item: ArchiveItem) -> ArchivedOutput:
        key = storage_key(item.job_id, item.index)
        async with self.fetcher.open(item.url) as download:
            await self.storage.put(key, download.chunks())
        size = image_size(bytes(download.head))
        return ArchivedOutput(
            storage_key=key,
            sha256=download.sha256,
            bytes=download.size,
            content_type=download.content_type or "application/octet-stream",
            width=size[0] if size else None,
            height=size[1] if size else None,
        )

    async def _failed(
        self, item: ArchiveItem, failure: FetchFailed, expiry: datetime | None
    ) -> None:
        retry_at = None
        if failure.retryable:
            retry_at = next_attempt_at(
                item.attempts, max_attempts=self.max_attempts, base_s=self.backoff_base_s,
                now=datetime.now(UTC), url_expires_at=expiry,
            )  # fmt: skip
        reason = failure.reason
        if failure.retryable and retry_at is None and item.attempts < self.max_attempts:
            reason += "; the URL expires before another attempt"
        tracing.failed(failure)
        tracing.annotate({"archive.outcome": failure.code, "archive.retry": retry_at is not None})
        recorded = await self.queue.record_failure(
            item, owner=self.owner, code=failure.code, reason=reason, retry_at=retry_at
        )
        if recorded and retry_at is None:
            OUTPUTS_ARCHIVED.labels(outcome="failed").inc()
        self._log.info(
            "output_archive_retry_scheduled" if retry_at else "output_archive_failed",
            job_id=item.job_id, index=item.index, code=failure.code, attempt=item.attempts,
        )  # fmt: skip
        if retry_at is not None:
            self.wake_if_sooner(retry_at)
