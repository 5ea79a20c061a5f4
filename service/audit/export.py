"""`python -m service audit export` and `audit verify --file`: a time range of the log as JSON
Lines, checked later with nothing but the file.

Each line is one event object exactly as the API returns it (`GET /v1/jobs/{id}/events`), with
its `prev_hash` and `hash`, in id (commit) order; only sealed events are exported (an event
committed a moment ago has no hash yet). Offline, each line's hash is recomputed from its
content (service.audit.chain: SHA-256 of RFC 8785 without `hash`), and within each job the
events must follow one another: seq + 1, `prev_hash` the previous line's `hash`, ids growing, and
`prev_hash` null for seq 1. A job whose first exported event has seq > 1 starts mid-chain: its
first `prev_hash` names an event before the range (kept in an earlier export, or in the log).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from pydantic import ValidationError

from schemas.events import Event
from service.audit.chain import event_hash


async def write_export(events: AsyncIterator[Event], out: IO[bytes]) -> tuple[int, int]:
    """Writes one line per event; returns (events, jobs) written."""
    count = 0
    jobs: set[str] = set()
    async for event in events:
        out.write(orjson.dumps(event.model_dump(mode="json")) + b"\n")
        count += 1
        jobs.add(event.job_id)
    return count, len(jobs)


@dataclass
class FileReport:
    """What the offline check of an export showed."""

    events: int = 0
    jobs: int = 0
    mid_chain: list[str] = field(default_factory=list)  # jobs whose first event has seq > 1
    failure: str | None = None

    @property
    def holds(self) -> bool:
        return self.failure is None


@dataclass
class _Last:
    id: int
    seq: int
    hash: str


def _where(number: int, line: dict[str, Any]) -> str:
    return (
        f"line {number} (event {line.get('id')}, job {line.get('job_id')}, seq {line.get('seq')})"
    )


def verify_lines(lines: Iterable[bytes]) -> FileReport:
    """Checks an export's lines; stops at the first that does not hold."""
    report = FileReport()
    last: dict[str, _Last] = {}
    last_id = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            event = Event.model_validate(line)
        except (orjson.JSONDecodeError, ValidationError) as exc:
            report.failure = f"line {number}: not an event object: {str(exc).splitlines()[0]}"
            return report
        failure = _check(event, line, last.get(event.job_id), last_id)
        if failure is not None:
            report.failure = f"{_where(number, line)}: {failure}"
            return report
        if event.job_id not in last:
            report.jobs += 1
            if event.seq > 1:
                report.mid_chain.append(event.job_id)
        assert event.hash is not None
        last[event.job_id] = _Last(event.id, event.seq, event.hash)
        last_id = event.id
        report.events += 1
    return report


def _check(event: Event, line: dict[str, Any], previous: _Last | None, last_id: int) -> str | None:
    if event.hash is None:
        return "it has no hash (exports hold sealed events only)"
    if event.id <= last_id:
        return "its id is not above the previous line's: lines were reordered or repeated"
    if event_hash(event, prev_hash=event.prev_hash) != event.hash:
        return "its content no longer matches its hash: edited"
    if event.model_dump(mode="json") != line:
        return "it is not an event object as the API returns it (members added or changed)"
    if previous is None:
        if event.seq == 1 and event.prev_hash is not None:
            return "seq 1 must have a null prev_hash"
        return None
    if event.seq != previous.seq + 1:
        return f"seq {previous.seq + 1} is missing before seq {event.seq}: an event was removed"
    if event.prev_hash != previous.hash:
        return "prev_hash is not the hash of the job's previous event"
    return None
