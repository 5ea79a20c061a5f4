"""The lazy job model: a job never owns a task.

Its status is computed from the time elapsed since it was created (see `Lifecycle`), so a
simulator can hold 100,000 in-flight jobs cheaply. Only webhook delivery is scheduled, with one
`loop.call_later` per job that has a callback URL (see `simulators.webhooks`).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, TypeVar

import orjson

Outcome = Literal["succeeded", "failed", "cancelled"]
# "held": the job was created while the provider was silent; its webhook waits for the silence
# to end (see `simulators.silence`).
CallbackState = Literal["none", "held", "scheduled", "delivering", "delivered", "dropped", "failed"]
# How a failing job fails: a provider-side error, or a content (safety) refusal.
FailReason = Literal["error", "content"]


@dataclass(slots=True, kw_only=True, eq=False)
class SimJob:
    """One simulated job; everything time-dependent is derived from the creation instant."""

    id: str
    model: str
    prompt: str
    input: dict[str, Any]
    base_url: str
    created_mono: float
    # Wall-clock creation time in whole microseconds (see `JobStore.next_wall_us`).
    created_us: int
    queue_s: float
    run_s: float
    will_fail: bool
    drop_callbacks: bool
    callback_url: str | None
    fingerprint: str
    fail_reason: FailReason = "error"
    cancelled_mono: float | None = None
    callback_state: CallbackState = "none"
    callback_attempts: int = 0
    callbacks_delivered: int = 0

    @property
    def created_wall(self) -> float:
        """Wall-clock creation time in seconds."""
        return self.created_us / 1e6

    @property
    def run_start_mono(self) -> float:
        """When the job leaves the queue and starts running."""
        return self.created_mono + self.queue_s

    @property
    def end_mono(self) -> float:
        """When the job ends if nobody cancels it."""
        return self.created_mono + self.queue_s + self.run_s

    @property
    def terminal_mono(self) -> float:
        """When the job ends, taking a cancellation into account."""
        return self.cancelled_mono if self.cancelled_mono is not None else self.end_mono

    @property
    def refused_content(self) -> bool:
        """Whether the job ends in a content (safety) refusal rather than succeeding."""
        return self.will_fail and self.fail_reason == "content"

    def outcome(self, now: float) -> Outcome | None:
        """Return how the job ended, or None while it is still queued or running."""
        if self.cancelled_mono is not None and now >= self.cancelled_mono:
            return "cancelled"
        if now < self.end_mono:
            return None
        return "failed" if self.will_fail else "succeeded"

    def wall(self, mono: float) -> float:
        """Convert a monotonic instant of this job to wall-clock seconds."""
        return self.created_wall + (mono - self.created_mono)


J = TypeVar("J", bound=SimJob)


class NewJob(TypedDict):
    """The fields every provider's job starts with; a provider's job class adds its own."""

    id: str
    model: str
    prompt: str
    input: dict[str, Any]
    base_url: str
    created_mono: float
    created_us: int
    queue_s: float
    run_s: float
    will_fail: bool
    drop_callbacks: bool
    callback_url: str | None
    fingerprint: str
    fail_reason: FailReason


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A provider's status names; the queue and run phases are split evenly among their steps."""

    queue_steps: Sequence[str]
    run_steps: Sequence[str]
    succeeded: str
    failed: str
    cancelled: str

    def points(self, job: SimJob) -> list[tuple[float, str]]:
        """Return every (monotonic instant, status) the job goes through, reached or not."""
        points: list[tuple[float, str]] = []
        for offset, steps, span in (
            (job.created_mono, self.queue_steps, job.queue_s),
            (job.run_start_mono, self.run_steps, job.run_s),
        ):
            for index, name in enumerate(steps):
                points.append((offset + span * index / len(steps), name))
        if job.cancelled_mono is not None:
            cancelled_at = job.cancelled_mono
            points = [p for p in points if p[0] <= cancelled_at]
            points.append((cancelled_at, self.cancelled))
        else:
            points.append((job.end_mono, self.failed if job.will_fail else self.succeeded))
        return points

    def history(self, job: SimJob, now: float) -> list[tuple[float, str]]:
        """Return the statuses reached by `now`, oldest first."""
        reached = [p for p in self.points(job) if p[0] <= now]
        return reached or [(job.created_mono, self.queue_steps[0])]

    def status(self, job: SimJob, now: float) -> str:
        """The provider's status name for the job at `now`."""
        return self.history(job, now)[-1][1]

    def with_steps(self, queue_steps: Sequence[str], run_steps: Sequence[str]) -> Lifecycle:
        """The same terminal names with other intermediate steps (a verbose walk-through)."""
        return replace(self, queue_steps=queue_steps, run_steps=run_steps)


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Timing and fault decisions taken once, when a job is created."""

    queue_s: float
    run_s: float
    will_fail: bool
    early: bool
    drop_callbacks: bool
    # Read only when will_fail: what the failure says (the provider renders each its own way).
    fail_reason: FailReason = "error"


def fingerprint(model: str, body: Any, callback_url: str | None) -> str:
    """Identify a logical submission, so repeated submits of the same work can be counted."""
    canonical = orjson.dumps([model, body, callback_url], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


class JobStore:
    """Every job of one simulator by id, and how often each logical submission was sent."""

    def __init__(self) -> None:
        self.jobs: dict[str, SimJob] = {}
        self._fingerprints: Counter[str] = Counter()
        self._last_wall_us = 0

    def add(self, job: SimJob) -> bool:
        """Store a new job; True when it repeats an earlier submission (same fingerprint)."""
        self.jobs[job.id] = job
        self._fingerprints[job.fingerprint] += 1
        return self._fingerprints[job.fingerprint] > 1

    def submit_count(self, job: SimJob) -> int:
        """How many jobs were created from the same submission as this one."""
        return self._fingerprints[job.fingerprint]

    def clear(self) -> None:
        self.jobs.clear()
        self._fingerprints.clear()

    def next_wall_us(self) -> int:
        """Wall-clock creation time in whole microseconds, strictly increasing.

        Integers (not floats) so that a time cursor parsed back from ISO text compares exactly,
        and strictly increasing so that two jobs never share a cursor value.
        """
        self._last_wall_us = max(time.time_ns() // 1000, self._last_wall_us + 1)
        return self._last_wall_us


def newest_first(
    jobs: Sequence[J], end: int, keep: Callable[[J], bool], limit: int
) -> tuple[list[J], int]:
    """Up to `limit` of `jobs[:end]` that `keep` accepts, newest (last) first.

    Also returns the index of the next job not looked at (-1 when all were), where a
    following page would start.
    """
    found: list[J] = []
    index = end - 1
    while index >= 0 and len(found) < limit:
        job = jobs[index]
        index -= 1
        if keep(job):
            found.append(job)
    return found, index
