"""The sealer: hashes committed events off the hot path, a moment after they are committed
(woken by the log's NOTIFY, with a safety poll), and makes a checkpoint every
`checkpoint_interval_s` when something new was sealed. Appending an event costs nothing more;
the chain's cost is this loop's, measured by `make bench` (section audit)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from service.audit.signing import CheckpointSigner
from service.errors import DatabaseUnavailable
from service.logs import get_logger
from service.metrics import AUDIT_CHECKPOINTS, AUDIT_EVENTS_SEALED
from service.store.audit import AuditLog


class Sealer:
    """Seals every committed event and checkpoints periodically; runs until cancelled."""

    def __init__(
        self,
        log: AuditLog,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_interval_s: float = 60.0,
        safety_poll_s: float = 1.0,
        batch: int = 1000,
        gather_s: float = 0.02,
    ) -> None:
        self.log = log
        self.signer = signer
        self.checkpoint_interval_s = checkpoint_interval_s
        self.safety_poll_s = safety_poll_s
        self.batch = batch
        self.gather_s = gather_s  # after a wake, let a burst's other commits arrive first
        self._wake = asyncio.Event()
        self._next_check = 0.0  # monotonic time of the next look at the last checkpoint
        self._log = get_logger("service.audit")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                sealed = await self.run_once()
                backoff = 0.5
                if sealed is None:
                    # Another instance seals: stand by, looking once per safety poll (to take
                    # over if it stops) instead of competing for the lock at every commit.
                    await asyncio.sleep(self.safety_poll_s)
                else:
                    await self._sleep(self.safety_poll_s)
            except DatabaseUnavailable:
                self._log.warning("sealer_database_unavailable", retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                self._log.exception("sealer_failed", retry_in_s=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def run_once(self) -> int | None:
        """Seals everything committed so far, then checkpoints if one is due; returns how
        many events this call sealed (None: another instance holds the sealer's lock)."""
        self._wake.clear()
        total = 0
        while True:
            sealed = await self.log.seal(limit=self.batch)
            if sealed is None and total == 0:
                return None
            if not sealed:  # None: another instance took over; 0: nothing left
                break
            total += sealed
            AUDIT_EVENTS_SEALED.inc(sealed)
            if sealed < self.batch:
                break
        await self._checkpoint_if_due()
        return total

    async def _checkpoint_if_due(self) -> None:
        if time.monotonic() < self._next_check:
            return
        # The last checkpoint may be another instance's: its age, not ours, decides.
        last = await self.log.last_checkpoint()
        if last is not None:
            age = (datetime.now(UTC) - last.created_at).total_seconds()
            if age < self.checkpoint_interval_s:
                self._next_check = time.monotonic() + self.checkpoint_interval_s - age
                return
        checkpoint = await self.log.checkpoint(self.signer)
        if checkpoint is not None:
            AUDIT_CHECKPOINTS.inc()
            self._log.info(
                "audit_checkpoint", checkpoint_id=checkpoint.id,
                last_event_id=checkpoint.last_event_id, heads=checkpoint.heads,
            )  # fmt: skip

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for (see ClaimLoop._sleep).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        if self._wake.is_set():
            await asyncio.sleep(self.gather_s)
