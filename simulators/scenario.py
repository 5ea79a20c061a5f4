"""Scenario API simulator (REFERENCE.md section 3): custom generation, jobs, cancel, assets.

Faithful enough for the official `scenario-sdk` to run unchanged against it when
`SCENARIO_BASE_URL` points at `{root}/v1`. Scenario is polled: this simulator sends no webhooks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web
from pydantic import Field

from simulators.base import ProviderSimulator
from simulators.config import SimulatorConfig
from simulators.handlers import (
    authenticated,
    counted,
    held_while_silent,
    poll_faults,
    submit_faults,
)
from simulators.images import clamp_side, file_url
from simulators.jobs import JobPlan, Lifecycle, SimJob, newest_first
from simulators.wire import iso_ms, json_response, read_json, read_json_object

PREFIX = "/v1"
CU_PER_OUTPUT = 5
_FAILURE_MESSAGE = "simulated generation failure"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# REFERENCE.md section 3 documents no content-refusal shape: a job ends in status `failure`
# with its reason in `metadata.error` (null otherwise). So a content refusal is a `failure`
# whose `metadata.error` names the content policy (Scenario is polled: no webhook).
CONTENT_REFUSAL_MESSAGE = (
    "Content policy violation: the request was flagged as NSFW by the safety filter"
)
# REFERENCE.md section 3 lists 403 among Scenario's errors (body shape undocumented): the
# refusal of every submit, whatever its body.
REFUSAL_STATUS = 403
REFUSAL_MESSAGE = "Forbidden: this project may not generate"

# Required parameters of the models documented in seeds 000-002; other models accept any body.
REQUIRED_PARAMETERS: dict[str, tuple[str, ...]] = {
    "model_flux-krea-dev": (),
    "model_flux-kontext-editing": ("prompt", "referenceImages"),
    "model_bfl-flux-2-klein-4b-base": ("prompt",),
}

# Output size for the seed's `aspectRatio` values (about one megapixel, as Scenario defaults).
ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
}


class ScenarioConfig(SimulatorConfig):
    """The Scenario simulator's config: the common one plus the key pair it accepts."""

    # Fake by design, as every simulator credential: they only ever unlock a local simulator.
    scenario_api_key: str = "sim-scenario-key"
    scenario_api_secret: str = "sim-scenario-secret"  # noqa: S105
    # How long an asset's signed URL works (undocumented by Scenario: "download at once").
    scenario_asset_url_seconds: int = Field(3600, ge=0)


def scenario_id(prefix: str) -> str:
    """Scenario-style id, e.g. `job_ocZCnG1Df35XRL1QyCZSRxAG8`: prefix plus base62 text."""
    number = uuid.uuid4().int
    chars: list[str] = []
    while number:
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return f"{prefix}_{''.join(chars)}"


@dataclass(slots=True, kw_only=True, eq=False)
class ScenarioJob(SimJob):
    """An inference job plus the assets it will produce."""

    asset_ids: list[str] = field(default_factory=list)
    width: int
    height: int


class ScenarioSimulator(ProviderSimulator[ScenarioConfig]):
    """Simulates api.cloud.scenario.com/v1 for one project, authenticated by key:secret."""

    name: ClassVar[str] = "scenario"
    lifecycle: ClassVar[Lifecycle] = Lifecycle(
        queue_steps=("queued",),
        run_steps=("in-progress",),
        succeeded="success",
        failed="failure",
        cancelled="canceled",
    )
    verbose_lifecycle: ClassVar[Lifecycle] = lifecycle.with_steps(
        ("pending", "queued"), ("warming-up", "in-progress", "finalizing")
    )
    rate_limit_message: ClassVar[str] = "Too many requests"
    unauthorized_message: ClassVar[str] = "Unauthorized"

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        super().__init__(ScenarioConfig.adopt(config))
        self._order: list[ScenarioJob] = []
        self._assets: dict[str, tuple[ScenarioJob, int]] = {}
        # Signs the temporary asset URLs; only their look matters, the files are public.
        self._url_secret = uuid.uuid4().bytes

    def on_reset(self) -> None:
        self._order.clear()
        self._assets.clear()

    def error_response(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        # Scenario's error body is undocumented (REFERENCE.md): JSON with a message.
        body: dict[str, Any] = {"message": message}
        if status == 429:
            body["details"] = {"actionName": "generate", "actionLimit": 10}
        return json_response(body, status=status, headers=headers)

    def refused_submit(self) -> web.Response:
        return self.error_response(REFUSAL_STATUS, REFUSAL_MESSAGE)

    def add_control_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_sim/bulk_jobs", self._bulk_jobs)

    async def _bulk_jobs(self, request: web.Request) -> web.Response:
        """Creates `count` jobs at once (benchmarks stage many in-flight jobs this way rather than
        through `count` generate requests). Body: {"count", "model", "queue_seconds",
        "run_seconds"}; answers {"job_ids": [...]}."""
        body, error = await read_json(request)
        if (
            error is not None
            or not isinstance(body, dict)
            or not isinstance(body.get("count"), int)
        ):
            return self.error_response(400, error or "body must be {count: int, ...}")
        model_id = str(body.get("model", "model_flux-krea-dev"))
        plan = JobPlan(
            queue_s=float(body.get("queue_seconds", self.config.queue_seconds)),
            run_s=float(body.get("run_seconds", self.config.run_seconds)),
            will_fail=False,
            early=False,
            drop_callbacks=False,
        )
        ids = []
        for n in range(body["count"]):
            prompt, job_id = f"bulk {n}", scenario_id("job")
            job = ScenarioJob(
                **self.new_job(
                    request,
                    plan,
                    job_id=job_id,
                    model=model_id,
                    prompt=prompt,
                    body={"prompt": prompt},
                    submission=f"bulk-{job_id}",  # never counted as a repeat
                ),
                asset_ids=[scenario_id("asset")],
                width=1024,
                height=768,
            )
            self._index(job)
            self.register(job)
            ids.append(job.id)
        return json_response({"job_ids": ids})

    def _index(self, job: ScenarioJob) -> None:
        """Keep a new job in creation order (for the list) and its assets by id."""
        self._order.append(job)
        for index, asset_id in enumerate(job.asset_ids):
            self._assets[asset_id] = (job, index)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(f"{PREFIX}/generate/custom/{{model_id}}", self._generate)
        router.add_get(f"{PREFIX}/jobs", self._list_jobs)
        router.add_get(f"{PREFIX}/jobs/{{job_id}}", self._get_job)
        router.add_post(f"{PREFIX}/jobs/{{job_id}}/action", self._job_action)
        router.add_get(f"{PREFIX}/assets/{{asset_id}}", self._get_asset)

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self.config.scenario_api_key}:{self.config.scenario_api_secret}"
        return hmac.compare_digest(decoded, expected)

    def job_json(
        self, job: ScenarioJob, now: float, *, as_submitted: bool = False
    ) -> dict[str, Any]:
        """The Job object of every `{"job": ...}` answer.

        `as_submitted` renders the job as the submit answer shows it: just created, even when
        it completed at once (the early fault).
        """
        lifecycle = self.current_lifecycle()
        history = (
            [(job.created_mono, lifecycle.queue_steps[0])]
            if as_submitted
            else lifecycle.history(job, now)
        )
        status = history[-1][1]
        outcome = None if as_submitted else job.outcome(now)
        if outcome == "succeeded":
            progress = 1.0
        elif now <= job.run_start_mono or job.run_s == 0:
            progress = 0.0
        else:
            elapsed = min(now, job.terminal_mono) - job.run_start_mono
            progress = round(min(1.0, elapsed / job.run_s), 3)
        return {
            "jobId": job.id,
            "jobType": "inference",
            "status": status,
            "progress": progress,
            "createdAt": iso_ms(job.created_wall),
            "updatedAt": iso_ms(job.wall(history[-1][0])),
            "authorId": "sim-author",
            "ownerId": "proj_sim",
            "metadata": {
                "assetIds": list(job.asset_ids) if outcome == "succeeded" else [],
                "error": self._failure_message(job) if outcome == "failed" else None,
                "hint": None,
                "input": {"modelId": job.model, **job.input},
            },
            "statusHistory": [
                {"date": iso_ms(job.wall(mono)), "status": name} for mono, name in history
            ],
            "billing": {"cuCost": CU_PER_OUTPUT * len(job.asset_ids), "cuDiscount": 0},
        }

    @staticmethod
    def _failure_message(job: ScenarioJob) -> str:
        """`metadata.error` of a failed job: a content refusal, or the simulated failure."""
        return CONTENT_REFUSAL_MESSAGE if job.refused_content else _FAILURE_MESSAGE

    def asset_json(self, job: ScenarioJob, index: int) -> dict[str, Any]:
        """The asset object of `GET /assets/{id}`, with a signed-looking temporary URL."""
        asset_id = job.asset_ids[index]
        expires = int(time.time()) + self.config.scenario_asset_url_seconds
        signature = hmac.new(
            self._url_secret, f"{asset_id}:{expires}".encode(), hashlib.sha256
        ).hexdigest()[:32]
        url = file_url(job.base_url, asset_id, width=job.width, height=job.height, fmt="png")
        created = iso_ms(job.wall(job.end_mono))
        return {
            "id": asset_id,
            "url": f"{url}?Expires={expires}&Signature={signature}",
            "mimeType": "image/png",
            "status": "success",
            "kind": "image",
            "source": "inference-txt",
            "privacy": "private",
            "authorId": "sim-author",
            "ownerId": "proj_sim",
            "collectionIds": [],
            "editCapabilities": [],
            "tags": [],
            "createdAt": created,
            "updatedAt": created,
            "metadata": {
                "kind": "image",
                "type": "inference-txt",
                "parentJobId": job.id,
                "modelId": job.model,
                "prompt": job.prompt,
            },
            "properties": {"width": job.width, "height": job.height, "size": 0},
        }

    def _check_body(self, model_id: str, body: dict[str, Any]) -> str | None:
        missing = [name for name in REQUIRED_PARAMETERS.get(model_id, ()) if name not in body]
        if missing:
            return f"Missing required parameter(s): {', '.join(missing)}"
        if "prompt" in body and not isinstance(body["prompt"], str):
            return "prompt must be a string"
        outputs = body.get("numOutputs", 1)
        if isinstance(outputs, bool) or not isinstance(outputs, int) or not 1 <= outputs <= 8:
            return "numOutputs must be an integer between 1 and 8"
        return None

    @counted("submits")
    @authenticated
    @submit_faults
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model_id = request.match_info["model_id"]
        body, error = await read_json_object(request)
        error = error or self._check_body(model_id, body)
        if error is not None:
            return self.rejected(error)

        prompt = body.get("prompt", "")
        plan = self.faults.plan_job(prompt)
        width, height = ASPECT_SIZES.get(str(body.get("aspectRatio", "4:3")), ASPECT_SIZES["4:3"])
        job = ScenarioJob(
            **self.new_job(
                request, plan, job_id=scenario_id("job"), model=model_id, prompt=prompt, body=body
            ),
            asset_ids=[scenario_id("asset") for _ in range(body.get("numOutputs", 1))],
            width=clamp_side(body.get("width"), width),
            height=clamp_side(body.get("height"), height),
        )
        self._index(job)
        self.register(job)  # Scenario is polled: no webhook to schedule
        answer = {
            "job": self.job_json(job, job.created_mono, as_submitted=True),
            "creativeUnitsCost": CU_PER_OUTPUT * len(job.asset_ids),
            "creativeUnitsDiscount": 0,
        }
        return json_response(answer)

    @counted("status_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        job = self.find_job(ScenarioJob, request.match_info["job_id"], missing="Job not found")
        return json_response({"job": self.job_json(job, time.monotonic())})

    @counted("list_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _list_jobs(self, request: web.Request) -> web.StreamResponse:
        # The token is the creation index to continue from (newest first); opaque to clients.
        page_size, start = self.page_query(request, ("pageSize", 50, 100), ("paginationToken", int))
        now = time.monotonic()
        end = len(self._order) if start is None else min(start + 1, len(self._order))
        wanted = self.status_is(request.query.get("status"), now)
        page, rest = newest_first(self._order, end, wanted, page_size)
        body: dict[str, Any] = {"jobs": [self.job_json(job, now) for job in page]}
        if rest >= 0 and len(page) == page_size:
            body["nextPaginationToken"] = str(rest)
        return json_response(body)

    @counted("cancels")
    @authenticated
    async def _job_action(self, request: web.Request) -> web.StreamResponse:
        job = self.find_job(ScenarioJob, request.match_info["job_id"], missing="Job not found")
        body, _ = await read_json(request)
        if not isinstance(body, dict) or body.get("action") != "cancel":
            return self.error_response(400, "Unsupported action: only 'cancel' is supported")
        now = time.monotonic()
        if job.outcome(now) is not None:
            return self.error_response(
                400, f"Job cannot be canceled in status {self.public_status(job, now)}"
            )
        self.cancel_job(job, now)
        return json_response({"job": self.job_json(job, now)})

    @counted("asset_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _get_asset(self, request: web.Request) -> web.StreamResponse:
        found = self._assets.get(request.match_info["asset_id"])
        # An asset exists only once its job succeeded.
        if found is None or found[0].outcome(time.monotonic()) != "succeeded":
            return self.error_response(404, "Asset not found")
        job, index = found
        return json_response({"asset": self.asset_json(job, index)})


def create_scenario_app(config: SimulatorConfig | None = None) -> web.Application:
    """Build the Scenario simulator application (API under `/v1`, controls under `/_sim`)."""
    return ScenarioSimulator(config).build_app()
