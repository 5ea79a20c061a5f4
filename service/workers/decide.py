"""What a claimed job needs next: a pure function of the job and the time, so that every rule
of the runner's schedule is read (and unit-tested) in one place."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from service.providers.base import JobRecord


class Action(StrEnum):
    NOTHING = "nothing"  # terminal: nothing left to do
    EXPIRE = "expire"  # past its hard deadline: one last look, then failed provider_timeout
    SUBMIT = "submit"  # never sent (or certainly not sent): send it, at most once
    RECORD_UNKNOWN = "record_unknown"  # started, its answer never recorded (a crash): record it
    SETTLE_UNKNOWN = "settle_unknown"  # outcome unknown: ask the provider (service.workers.unknown)
    CANCEL = "cancel"  # cancel requested and not yet sent to the provider
    POLL = "poll"  # in flight: ask the provider for its status


def decide(job: JobRecord, now: datetime) -> Action:
    if job.status.is_terminal:
        return Action.NOTHING
    if job.deadline_at is not None and now >= job.deadline_at:
        return Action.EXPIRE
    if job.awaits_submission:
        if job.submit_started_at is None:
            return Action.SUBMIT
        if job.submit_unknown_at is None:
            return Action.RECORD_UNKNOWN
        return Action.SETTLE_UNKNOWN
    if job.cancel_requested and not job.cancel_sent:
        return Action.CANCEL
    return Action.POLL
