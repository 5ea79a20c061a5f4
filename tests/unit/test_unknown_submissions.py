"""Settling an unknown submission: the judgement on the provider's listed jobs, and the
adapters' reading of the job lists (httpx.MockTransport)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from service.providers.base import ListedJob
from service.providers.krea import KreaAdapter
from service.providers.scenario import ScenarioAdapter
from service.workers.unknown import judge, submission_window
from tests.unit.test_adapters import record

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTLE = timedelta(seconds=15)


def listed(pid: str, *, terminal: bool = False, ended_ago_s: float | None = None,
           matches: bool | None = None) -> ListedJob:  # fmt: skip
    completed = NOW - timedelta(seconds=ended_ago_s) if ended_ago_s is not None else None
    return ListedJob(pid, NOW, terminal=terminal, completed_at=completed, matches_request=matches)


def test_nothing_left_once_our_other_jobs_are_set_aside_means_it_never_left() -> None:
    jobs = [listed("ours-1"), listed("ours-2", terminal=True, ended_ago_s=1)]
    verdict = judge(jobs, bound_elsewhere={"ours-1", "ours-2"}, now=NOW, callback_settle=SETTLE)
    assert verdict.verdict == "send"
    assert judge([], bound_elsewhere=set(), now=NOW, callback_settle=SETTLE).verdict == "send"


def test_jobs_whose_echoed_input_differs_are_not_candidates() -> None:
    verdict = judge([listed("other", matches=False)], bound_elsewhere=set(), now=NOW,
                    callback_settle=SETTLE)  # fmt: skip
    assert verdict.verdict == "send"


def test_the_earliest_job_echoing_the_request_is_bound() -> None:
    early = ListedJob("early", NOW - timedelta(seconds=1), terminal=False, matches_request=True)
    late = ListedJob("late", NOW, terminal=False, matches_request=True)
    verdict = judge([late, early], bound_elsewhere=set(), now=NOW, callback_settle=SETTLE)
    assert (verdict.verdict, verdict.provider_job_id) == ("bind", "early")
    verdict = judge([late, early], bound_elsewhere={"early"}, now=NOW, callback_settle=SETTLE)
    assert (verdict.verdict, verdict.provider_job_id) == ("bind", "late")


@pytest.mark.parametrize(
    ("job", "verdict"),
    [
        (listed("x"), "wait"),  # still running: its callback, if ours, will bind it
        (listed("x", terminal=True, ended_ago_s=5), "wait"),  # its callback may be on its way
        (listed("x", terminal=True, ended_ago_s=20), "give_up"),  # it had its chance
        (listed("x", terminal=True), "give_up"),  # ended, no end time given
    ],
)
def test_a_job_that_cannot_be_told_apart_is_waited_for_then_given_up(
    job: ListedJob, verdict: str
) -> None:
    judgement = judge([job], bound_elsewhere=set(), now=NOW, callback_settle=SETTLE)
    assert judgement.verdict == verdict
    assert judgement.unattributed == ("x",)


def test_the_window_brackets_the_start_with_skew_and_send_time() -> None:
    since, until = submission_window(NOW)
    assert since < NOW < until
    assert until - NOW >= timedelta(seconds=30)


def _pages(pages: dict[str | None, dict[str, object]], key: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get(key)])

    return httpx.MockTransport(handle)


async def test_krea_pages_back_to_the_windows_start() -> None:
    def job(pid: str, created: datetime, status: str = "processing") -> dict[str, object]:
        stamp = created.isoformat().replace("+00:00", "Z")
        done = stamp if status == "completed" else None
        return {"job_id": pid, "status": status, "created_at": stamp, "completed_at": done}

    pages: dict[str | None, dict[str, object]] = {
        None: {"items": [job("too-new", NOW + timedelta(minutes=5)), job("a", NOW)],
               "next_cursor": "c1"},
        "c1": {"items": [job("b", NOW - timedelta(seconds=2), "completed"),
                         job("too-old", NOW - timedelta(minutes=5))], "next_cursor": "c2"},
    }  # fmt: skip
    adapter = KreaAdapter(base_url="http://krea", token="t", transport=_pages(pages, "cursor"))
    since, until = submission_window(NOW)
    found = await adapter.list_jobs_since(record("krea"), request={}, since=since, until=until)
    await adapter.aclose()
    assert [(j.provider_job_id, j.terminal, j.matches_request) for j in found] == [
        ("a", False, None),
        ("b", True, None),
    ]
    assert found[1].completed_at == NOW - timedelta(seconds=2)


async def test_scenario_compares_the_echoed_input_with_the_request() -> None:
    stamp = NOW.isoformat().replace("+00:00", "Z")

    def job(pid: str, echoed: dict[str, object]) -> dict[str, object]:
        return {"jobId": pid, "status": "in-progress", "createdAt": stamp,
                "metadata": {"assetIds": [], "input": echoed}}  # fmt: skip

    request = {"prompt": "a lighthouse", "numOutputs": 1}
    pages: dict[str | None, dict[str, object]] = {
        None: {"jobs": [
            job("same", {"modelId": "m", "prompt": "a lighthouse", "numOutputs": 1, "steps": 28}),
            job("other-prompt", {"modelId": "m", "prompt": "a harbour", "numOutputs": 1}),
            job("other-model", {"modelId": "n", "prompt": "a lighthouse", "numOutputs": 1}),
        ]},
    }  # fmt: skip
    adapter = ScenarioAdapter(base_url="http://sc/v1", api_key="k", api_secret="s",
                              transport=_pages(pages, "paginationToken"))  # fmt: skip
    since, until = submission_window(NOW)
    found = await adapter.list_jobs_since(
        record("scenario", model="m"), request=request, since=since, until=until
    )
    await adapter.aclose()
    assert {j.provider_job_id: j.matches_request for j in found} == {
        "same": True, "other-prompt": False, "other-model": False,
    }  # fmt: skip
