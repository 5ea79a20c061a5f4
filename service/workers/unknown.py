"""Settling a submission whose outcome is unknown (the request may or may not have created a job
at the provider: a crash after `submission_started`, a 5xx, a timeout after sending).

A job is never sent twice, and a binding is never guessed. Where the provider lists its jobs
(Krea, Scenario), the jobs it created in the submission's window are read and judged here:

- none is left once the jobs bound to our other jobs are set aside: the request never created
  a job, so it is simply sent (`send`);
- one echoes this job's exact request (Scenario shows each job's input): it is this job's, and
  is bound to it unless another of our jobs holds it (`bind`);
- some cannot be told apart (Krea shows no input): each of them, if it is ours, calls back with
  this job's token, which binds it. So wait while one of them is still running or finished so
  recently that its callback may be on its way (`wait`), then give up (`give_up`): the job ends
  failed with `submission_outcome_unknown`, never resent.

Where the provider offers no list (fal), the callback is the only news: the runner waits for it
as long as the model's observed completion times say it could take (service.workers.schedule).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from service.providers.base import ListedJob

#: Provider and service clocks may disagree by this much when the window is read.
CLOCK_SKEW = timedelta(seconds=5)
#: A request leaves at most this long after its submission started (pool + connect + write
#: timeouts of service.providers.http), so a job created later is not this submission's.
SEND_WINDOW = timedelta(seconds=30)

Verdict = Literal["send", "bind", "wait", "give_up"]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    provider_job_id: str | None = None  # the job to bind
    unattributed: tuple[str, ...] = ()  # listed jobs that could be this submission's

    def as_data(self) -> dict[str, object]:
        data: dict[str, object] = {"verdict": self.verdict}
        if self.provider_job_id is not None:
            data["provider_job_id"] = self.provider_job_id
        if self.unattributed:
            data["unattributed"] = list(self.unattributed)
        return data


def submission_window(started_at: datetime) -> tuple[datetime, datetime]:
    """When a job created by a submission started at `started_at` can have been created."""
    return started_at - CLOCK_SKEW, started_at + SEND_WINDOW + CLOCK_SKEW


def judge(
    listed: Sequence[ListedJob],
    *,
    bound_elsewhere: Collection[str],
    now: datetime,
    callback_settle: timedelta,
) -> Judgement:
    """What to do with an unknown submission, from the provider's jobs in its window and the
    ids of those among them that are already bound to our jobs."""
    open_ = [
        job
        for job in listed
        if job.provider_job_id not in bound_elsewhere and job.matches_request is not False
    ]
    if not open_:
        return Judgement("send")
    exact = sorted(
        (job for job in open_ if job.matches_request),
        key=lambda job: (job.created_at is None, job.created_at),
    )
    if exact:
        return Judgement("bind", provider_job_id=exact[0].provider_job_id)
    unattributed = tuple(job.provider_job_id for job in open_)
    may_still_call_back = any(
        not job.terminal
        or (job.completed_at is not None and now < job.completed_at + callback_settle)
        for job in open_
    )
    return Judgement("wait" if may_still_call_back else "give_up", unattributed=unattributed)
