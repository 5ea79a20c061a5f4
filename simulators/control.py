"""The `/_sim` control API every simulator serves beside its provider's API.

`GET|POST /_sim/config` (read, or merge a patch of flat keys), `GET /_sim/stats` (counters),
`POST /_sim/stats/reset-peak` (start `peak_in_flight_requests` again from the requests in
flight now), `GET /_sim/jobs[?prompt_contains=]`, `POST /_sim/reset`, `GET /_sim/files/{name}`
(outputs).

`GET /_sim/stats` has the counters of `STAT_NAMES` (and any other a provider counts), plus the
state of the moment: `jobs`, `in_flight` (jobs not yet ended), `callbacks_pending` (webhooks
scheduled or being sent), `in_flight_requests` (API requests being handled now, see
`simulators.load`) and `peak_in_flight_requests` (the most at once since the last reset).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from simulators.images import FILES_PATH, file_response, signed_url_expired
from simulators.pauses import client_gone
from simulators.wire import CONTROL_PREFIX, json_response, read_json

if TYPE_CHECKING:
    from simulators.base import ProviderSimulator

# Counters always present in `GET /_sim/stats` (zero until something happens), so tests can
# read any of them without guarding against a missing key.
STAT_NAMES = (
    "submits",
    "jobs_created",
    "duplicate_submits",
    "auth_failures",
    "validation_errors",
    "rate_limited",
    "server_errors",
    "errors_after_submit",
    "poll_errors",
    "submits_refused",  # submit_mode "refuse"
    "submits_unavailable",  # submit_mode "unavailable"
    "content_refusals",  # jobs created to end in a content refusal ([content], fail_reason)
    "silent_holds",  # requests held unanswered while silent
    "callbacks_held",  # webhooks kept back because their job was created while silent
    "abandoned_requests",  # API requests whose client left during slow_seconds: never handled
    "status_requests",
    "status_stream_requests",
    "result_requests",
    "list_requests",
    "asset_requests",
    "file_requests",
    "file_errors",
    "jwks_requests",
    "key_rotations",
    "cancels",
    "jobs_cancelled",
    "callback_attempts",
    "callbacks_sent",
    "callbacks_failed",
    "callbacks_abandoned",
    "callbacks_dropped",
    "callbacks_duplicated",
)


class ControlApi:
    """The `/_sim` routes of one simulator: its config, counters, jobs, reset and files."""

    def __init__(self, sim: ProviderSimulator[Any]) -> None:
        self._sim = sim

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"{CONTROL_PREFIX}/config", self._get_config)
        router.add_post(f"{CONTROL_PREFIX}/config", self._post_config)
        router.add_get(f"{CONTROL_PREFIX}/stats", self._get_stats)
        router.add_post(f"{CONTROL_PREFIX}/stats/reset-peak", self._post_reset_peak)
        router.add_get(f"{CONTROL_PREFIX}/jobs", self._get_jobs)
        router.add_post(f"{CONTROL_PREFIX}/reset", self._post_reset)
        router.add_get(f"{FILES_PATH}/{{name}}", self._get_file)

    async def _get_config(self, request: web.Request) -> web.Response:
        del request
        return json_response(self._sim.config.model_dump())

    async def _post_config(self, request: web.Request) -> web.Response:
        patch, error = await read_json(request)
        if error is not None or not isinstance(patch, dict):
            return json_response({"error": error or "body must be a JSON object"}, status=400)
        try:
            config = self._sim.update_config(patch)
        except ValidationError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(config.model_dump())

    async def _get_stats(self, request: web.Request) -> web.Response:
        del request
        sim = self._sim
        now = time.monotonic()
        in_flight = sum(1 for job in sim.jobs.values() if job.outcome(now) is None)
        return json_response(
            {
                **{name: sim.stats[name] for name in STAT_NAMES},
                **sim.stats,
                "jobs": len(sim.jobs),
                "in_flight": in_flight,
                "callbacks_pending": sim.webhooks.pending,
                "in_flight_requests": sim.in_flight.count,
                "peak_in_flight_requests": sim.in_flight.peak,
            }
        )

    async def _post_reset_peak(self, request: web.Request) -> web.Response:
        del request
        in_flight = self._sim.in_flight
        peak = in_flight.reset_peak()
        return json_response(
            {"in_flight_requests": in_flight.count, "peak_in_flight_requests": peak}
        )

    async def _get_jobs(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        prompt_filter = request.query.get("prompt_contains")
        jobs = [
            self._sim.job_summary(job, now)
            for job in self._sim.jobs.values()
            if prompt_filter is None or prompt_filter in job.prompt
        ]
        return json_response({"jobs": jobs})

    async def _post_reset(self, request: web.Request) -> web.Response:
        del request
        self._sim.reset()
        return json_response({"reset": True})

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        """An output file, after the file faults in force: an error status, a deleted file,
        an expired signed URL (403), or a body sent late."""
        sim = self._sim
        sim.stats["file_requests"] += 1
        if sim.config_state.consume("file_error_next"):
            sim.stats["file_errors"] += 1
            return json_response({"error": "injected fault"}, status=sim.config.file_error_status)
        if sim.config.files_gone:
            return json_response({"error": "file not found"}, status=404)
        if signed_url_expired(request.query, time.time()):
            return json_response({"error": "Request has expired"}, status=403)
        answer = file_response(request.match_info["name"])
        if sim.config.file_slow_seconds <= 0 or answer.status != 200:
            return answer
        # Headers now, body later: the client is mid-download for the whole delay (which
        # follows the setting, so that lowering it lets the bodies held so far go).
        assert isinstance(answer.body, bytes)
        arrived = time.monotonic()
        slow = web.StreamResponse(headers=answer.headers)
        slow.content_length = len(answer.body)
        await slow.prepare(request)
        if not await sim.pauses.delay(
            arrived, lambda: sim.config.file_slow_seconds, client_gone(request)
        ):
            return slow  # the client left: nothing more to write
        await slow.write(answer.body)
        await slow.write_eof()
        return slow
