"""fal queue API simulator (REFERENCE.md section 1), including Ed25519-signed webhooks and JWKS.

Faithful enough for the official `fal-client` to run unchanged against it once
`fal_client.client.QUEUE_URL_FORMAT` points here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulators.base import ProviderSimulator
from simulators.config import SimulatorConfig
from simulators.handlers import (
    Answer,
    authenticated,
    counted,
    held_while_silent,
    poll_faults,
    submit_faults,
)
from simulators.images import ImageFormat, clamp_side, file_url
from simulators.jobs import JobPlan, Lifecycle, Outcome, SimJob
from simulators.wire import is_http_url, iso_ms, json_response, read_json, read_json_object

# App ids under these namespaces have one more leading segment (fal-client's APP_NAMESPACES).
NAMESPACES = ("workflows", "comfy")

IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

CANCELLED_MESSAGE = "Request was cancelled"
# REFERENCE.md section 1 documents no content-refusal shape; its closest is the model's 422
# error (`{"detail": [{"loc", "msg", "type"}]}`, also the ERROR webhook's payload) with the
# status's `error_type`. A content refusal is that error with type `content_policy_violation`,
# fal's name for input or output flagged by a content checker (documented in fal's own error
# reference, outside REFERENCE.md).
CONTENT_POLICY_TYPE = "content_policy_violation"
CONTENT_POLICY_MESSAGE = (
    "The content could not be processed because it contained material flagged by a content checker."
)
# The refusal of every submit: REFERENCE.md documents no account-level refusal for fal, only
# the 422 validation error, so the submit is refused in that shape.
REFUSAL_DETAIL = [
    {"loc": ["body"], "msg": "submissions to this app are refused", "type": "value_error"}
]
# REFERENCE.md section 1: fal's infrastructure errors name their cause in `error_type` (and in
# the `X-Fal-Error-Type` header); these are its documented types for a 503 and a 504.
UNAVAILABLE_TYPES = {503: "runner_scheduling_failure", 504: "startup_timeout"}


class FalImageSize(BaseModel):
    """Explicit `image_size` object of fal image models."""

    width: int = Field(gt=0, le=14142)
    height: int = Field(gt=0, le=14142)


class FluxKreaInput(BaseModel):
    """Input schema of `fal-ai/flux/krea` (seed 004); fal ignores unknown fields."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    image_size: (
        Literal[
            "square_hd",
            "square",
            "portrait_4_3",
            "portrait_16_9",
            "landscape_4_3",
            "landscape_16_9",
        ]
        | FalImageSize
    ) = "landscape_4_3"
    num_inference_steps: int = Field(28, ge=1, le=50)
    seed: int | None = None
    guidance_scale: float = Field(4.5, ge=1, le=20)
    sync_mode: bool = False
    num_images: int = Field(1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    acceleration: Literal["none", "regular", "high"] = "none"


class PromptInput(BaseModel):
    """Minimal input check for any other app: a string `prompt` is required."""

    model_config = ConfigDict(extra="allow")

    prompt: str


INPUT_MODELS: dict[str, type[BaseModel]] = {"fal-ai/flux/krea": FluxKreaInput}


class FalConfig(SimulatorConfig):
    """The fal simulator's config: the common one plus its account and fal's own faults."""

    # Fake by design, as every simulator credential: they only ever unlock a local simulator.
    fal_key: str = "sim-fal-key"
    fal_user_id: str = "sim-user"
    # Signed-webhook faults: a signature no published key verifies, a stale timestamp.
    callback_bad_signature: bool = False
    callback_timestamp_skew_seconds: float = 0.0
    # fal validates input when the runner starts (so a bad body is an ERROR result/webhook);
    # set this to answer 422 at submit instead.
    fal_validate_on_submit: bool = False


@dataclass(slots=True, kw_only=True, eq=False)
class FalJob(SimJob):
    """A queued fal request plus what its result will contain."""

    base_path: str  # "owner/alias" (or "namespace/owner/alias"): never the sub-path
    seed: int
    width: int
    height: int
    num_images: int
    output_format: ImageFormat
    validation_detail: list[dict[str, Any]] | None = None

    @property
    def response_url(self) -> str:
        """The result URL; status and cancel URLs append `/status` and `/cancel`."""
        return f"{self.base_url}/{self.base_path}/requests/{self.id}"

    def urls(self) -> dict[str, str]:
        """The request's URLs as the submit and status answers carry them."""
        url = self.response_url
        return {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}


@dataclass(frozen=True, slots=True)
class FalFailure:
    """How a failed or cancelled request shows in status, result and webhook."""

    http_status: int
    body: Any
    error: str
    error_type: str


def validation_detail(app_id: str, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Validate like fal's FastAPI apps; return the 422 `detail` list, or None when valid."""
    try:
        INPUT_MODELS.get(app_id, PromptInput).model_validate(body)
    except ValidationError as exc:
        detail: list[dict[str, Any]] = []
        for err in exc.errors():
            loc = ["body", *err["loc"]]
            if err["type"] == "missing":
                # fal's apps still answer in the pydantic v1 wording (REFERENCE.md example).
                detail.append({"loc": loc, "msg": "field required", "type": "value_error.missing"})
            else:
                detail.append({"loc": loc, "msg": err["msg"], "type": err["type"]})
        return detail
    return None


def app_base_path(app_id: str) -> str | None:
    """`owner/alias` (or `namespace/owner/alias`) of an app id, None when it names no app."""
    parts = app_id.split("/")
    namespace = [parts[0]] if parts[0] in NAMESPACES else []
    owner_alias = parts[len(namespace) : len(namespace) + 2]
    if len(owner_alias) < 2 or not all(owner_alias):
        return None
    return "/".join(namespace + owner_alias)


def _wants_logs(request: web.Request) -> bool:
    return request.query.get("logs", "").lower() in ("1", "true")


def _output_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, str) and image_size in IMAGE_SIZES:
        return IMAGE_SIZES[image_size]
    if isinstance(image_size, dict):
        return clamp_side(image_size.get("width"), 1024), clamp_side(image_size.get("height"), 768)
    return IMAGE_SIZES["landscape_4_3"]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def public_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    """The JWKS entry of a key, as fal publishes them."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(raw),
        "kid": hashlib.sha256(raw).hexdigest()[:16],
        "use": "sig",
        "alg": "EdDSA",
    }


class FalSimulator(ProviderSimulator[FalConfig]):
    """Simulates queue.fal.run (+ the JWKS of rest.fal.ai) for one account."""

    name: ClassVar[str] = "fal"
    lifecycle: ClassVar[Lifecycle] = Lifecycle(
        queue_steps=("IN_QUEUE",),
        run_steps=("IN_PROGRESS",),
        succeeded="COMPLETED",
        failed="COMPLETED",
        cancelled="COMPLETED",
    )
    verbose_lifecycle: ClassVar[Lifecycle] = lifecycle
    unauthorized_message: ClassVar[str] = "Invalid or missing API key"
    # fal retries a webhook up to 10 times.
    default_callback_attempts: ClassVar[int] = 10

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        super().__init__(FalConfig.adopt(config))
        # Published keys, newest (the signing one) first.
        self._keys: list[Ed25519PrivateKey] = [Ed25519PrivateKey.generate()]
        # Never published: signs webhooks when the bad-signature fault is on.
        self._rogue_key = Ed25519PrivateKey.generate()

    # ----- keys --------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The published key set, as served at `/.well-known/jwks.json`."""
        return {"keys": [public_jwk(key) for key in self._keys]}

    @property
    def signing_kid(self) -> str:
        """Key id of the key that signs webhooks now."""
        return public_jwk(self._keys[0])["kid"]

    def rotate_key(self, *, keep_old: bool = False) -> dict[str, Any]:
        """Start signing with a new key; by default the old one is unpublished at once."""
        new_key = Ed25519PrivateKey.generate()
        self._keys = [new_key, *self._keys] if keep_old else [new_key]
        self.stats["key_rotations"] += 1
        return self.jwks()

    # ----- provider hooks ----------------------------------------------------------------

    def error_response(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return json_response({"detail": message}, status=status, headers=headers)

    def refused_submit(self) -> web.Response:
        return json_response({"detail": REFUSAL_DETAIL}, status=422)

    def unavailable_submit(self, status: int) -> web.Response:
        error_type = UNAVAILABLE_TYPES.get(status)
        if error_type is None:
            return super().unavailable_submit(status)
        return json_response(
            {"detail": "No runner available", "error_type": error_type},
            status=status,
            headers={"X-Fal-Error-Type": error_type},
        )

    def add_control_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_sim/rotate_key", self._rotate_key)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/.well-known/jwks.json", self._get_jwks)
        router.add_get("/{base:.+}/requests/{request_id}/status/stream", self._status_stream)
        router.add_get("/{base:.+}/requests/{request_id}/status", self._status)
        router.add_put("/{base:.+}/requests/{request_id}/cancel", self._cancel)
        router.add_get("/{base:.+}/requests/{request_id}", self._result)
        router.add_post("/{app_id:.+}", self._submit)

    def job_summary(self, job: SimJob, now: float) -> dict[str, Any]:
        summary = super().job_summary(job, now)
        if isinstance(job, FalJob):
            summary["response_url"] = job.response_url
        return summary

    # ----- rendering ---------------------------------------------------------------------

    def failure(self, job: FalJob, outcome: Outcome) -> FalFailure:
        """Describe an unsuccessful request (validation error, injected failure, cancel)."""
        if outcome == "cancelled":
            body = {"detail": CANCELLED_MESSAGE, "error_type": "request_cancelled"}
            return FalFailure(400, body, CANCELLED_MESSAGE, "request_cancelled")
        if job.validation_detail is not None:
            return FalFailure(
                422,
                {"detail": job.validation_detail},
                "Invalid status code: 422",
                "validation_error",
            )
        if job.refused_content:
            refusal = [
                {
                    "loc": ["body", "prompt"],
                    "msg": CONTENT_POLICY_MESSAGE,
                    "type": CONTENT_POLICY_TYPE,
                    "input": job.prompt,
                }
            ]
            return FalFailure(
                422, {"detail": refusal}, "Invalid status code: 422", CONTENT_POLICY_TYPE
            )
        detail = [
            {
                "loc": ["body", "prompt"],
                "msg": "simulated generation failure",
                "type": "simulated_failure",
            }
        ]
        return FalFailure(422, {"detail": detail}, "Invalid status code: 422", "simulated_failure")

    def result_body(self, job: FalJob) -> dict[str, Any]:
        """The model's output, as the result endpoint and the OK webhook carry it."""
        images = [
            {
                "url": file_url(
                    job.base_url,
                    f"{job.id}-{index}",
                    width=job.width,
                    height=job.height,
                    fmt=job.output_format,
                ),
                "content_type": f"image/{job.output_format}",
                "width": job.width,
                "height": job.height,
            }
            for index in range(job.num_images)
        ]
        return {
            "images": images,
            "timings": {"inference": round(job.run_s, 3)},
            "seed": job.seed,
            "has_nsfw_concepts": [False] * job.num_images,
            "prompt": job.prompt,
        }

    def _logs(self, job: FalJob, now: float) -> list[dict[str, Any]]:
        logs: list[dict[str, Any]] = []
        if now >= job.run_start_mono and job.terminal_mono >= job.run_start_mono:
            logs.append(self._log(job, job.run_start_mono, "Generating image"))
        if job.outcome(now) == "succeeded":
            logs.append(self._log(job, job.end_mono, "Image generated"))
        return logs

    @staticmethod
    def _log(job: FalJob, mono: float, message: str) -> dict[str, Any]:
        return {
            "message": message,
            "level": "INFO",
            "source": "USER",
            "timestamp": iso_ms(job.wall(mono)),
        }

    def status_json(self, job: FalJob, now: float, *, with_logs: bool) -> dict[str, Any]:
        """The status endpoint's body (the HTTP code follows from its `status`)."""
        status = self.public_status(job, now)
        body: dict[str, Any] = {"status": status, "request_id": job.id, **job.urls()}
        if status == "IN_QUEUE":
            # Position is not tracked per job (that would cost O(n) per poll): always "next".
            body["queue_position"] = 0
            return body
        body["logs"] = self._logs(job, now) if with_logs else []
        outcome = job.outcome(now)
        if outcome is not None:
            body["metrics"] = {} if outcome == "cancelled" else {"inference_time": job.run_s}
            if outcome != "succeeded":
                failure = self.failure(job, outcome)
                body["error"] = failure.error
                body["error_type"] = failure.error_type
        return body

    def webhook_payload(self, job: FalJob, now: float) -> dict[str, Any]:
        """The webhook body of REFERENCE.md section 1 (OK with payload, or ERROR)."""
        outcome = job.outcome(now)
        envelope: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
        if outcome == "succeeded":
            return {**envelope, "status": "OK", "payload": self.result_body(job)}
        failure = self.failure(job, outcome or "failed")
        return {**envelope, "status": "ERROR", "error": failure.error, "payload": failure.body}

    def render_callback(self, job: SimJob) -> tuple[bytes, dict[str, str]]:
        assert isinstance(job, FalJob)
        cfg = self.config
        now = max(time.monotonic(), job.terminal_mono)
        body = orjson.dumps(self.webhook_payload(job, now))
        # Each attempt is signed afresh, with its own timestamp, as a real sender would.
        timestamp = str(int(time.time() + cfg.callback_timestamp_skew_seconds))
        message = "\n".join(
            [job.id, cfg.fal_user_id, timestamp, hashlib.sha256(body).hexdigest()]
        ).encode()
        key = self._rogue_key if cfg.callback_bad_signature else self._keys[0]
        return body, {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": job.id,
            "X-Fal-Webhook-User-Id": cfg.fal_user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": key.sign(message).hex(),
        }

    # ----- handlers ----------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Key {self.config.fal_key}"

    def _find(self, request: web.Request, *, missing: web.Response | None = None) -> FalJob:
        """The request the URL names, else a 404 (`missing`, or the usual body)."""
        job = self.jobs.get(request.match_info["request_id"])
        # The status/result/cancel URLs carry owner/alias only: a sub-path there is a 404.
        if isinstance(job, FalJob) and job.base_path == request.match_info["base"]:
            return job
        raise Answer(missing or self.error_response(404, "Request not found"))

    @counted("jwks_requests")
    async def _get_jwks(self, request: web.Request) -> web.StreamResponse:
        del request
        return json_response(self.jwks(), headers={"Cache-Control": "max-age=86400"})

    async def _rotate_key(self, request: web.Request) -> web.Response:
        patch, _ = await read_json(request)
        keep_old = bool(patch.get("keep_old")) if isinstance(patch, dict) else False
        return json_response(self.rotate_key(keep_old=keep_old))

    @counted("submits")
    async def _submit(self, request: web.Request) -> web.StreamResponse:
        app_id = request.match_info["app_id"].strip("/")
        if app_id.startswith("_sim"):
            return self.error_response(404, "Not found")
        return await self._submit_to_app(request, app_id)

    @authenticated
    async def _submit_to_app(self, request: web.Request, app_id: str) -> web.StreamResponse:
        base_path = app_base_path(app_id)
        if base_path is None:
            return self.error_response(404, f"Application '{app_id}' not found")
        return await self._enqueue(request, app_id, base_path)

    @submit_faults
    async def _enqueue(
        self, request: web.Request, app_id: str, base_path: str
    ) -> web.StreamResponse:
        body, error = await read_json_object(request)
        if error is not None:
            self.stats["validation_errors"] += 1
            body_error = [{"loc": ["body"], "msg": error, "type": "value_error.jsondecode"}]
            return json_response({"detail": body_error}, status=422)
        webhook_url = request.query.get("fal_webhook")
        if webhook_url is not None and not is_http_url(webhook_url):
            return self.rejected("fal_webhook must be an http(s) URL")
        detail = validation_detail(app_id, body)
        if detail is not None:
            self.stats["validation_errors"] += 1
            if self.config.fal_validate_on_submit:
                return json_response({"detail": detail}, status=422)

        job, plan = self._new_job(request, app_id, base_path, body, webhook_url, detail)
        await self.start_job(job, plan)
        answer = {"request_id": job.id, "status": "IN_QUEUE", "queue_position": 0, **job.urls()}
        return json_response(answer, headers={"x-fal-request-id": job.id})

    def _new_job(
        self,
        request: web.Request,
        app_id: str,
        base_path: str,
        body: dict[str, Any],
        webhook_url: str | None,
        detail: list[dict[str, Any]] | None,
    ) -> tuple[FalJob, JobPlan]:
        prompt = body.get("prompt")
        prompt = prompt if isinstance(prompt, str) else ""
        plan = self.faults.plan_job(prompt)
        if detail is not None:
            # An invalid body fails as soon as a runner picks it up, as a validation error.
            plan = dataclasses.replace(plan, run_s=0.0, will_fail=True, fail_reason="error")
        common = self.new_job(
            request,
            plan,
            job_id=str(uuid.uuid4()),
            model=app_id,
            prompt=prompt,
            body=body,
            callback_url=webhook_url,
        )
        width, height = _output_size(body.get("image_size"))
        num_images, seed = body.get("num_images"), body.get("seed")
        job = FalJob(
            **common,
            base_path=base_path,
            seed=seed if isinstance(seed, int) else self.config_state.rng.randrange(2**31),
            width=width,
            height=height,
            num_images=num_images if isinstance(num_images, int) and 1 <= num_images <= 4 else 1,
            output_format="png" if body.get("output_format") == "png" else "jpeg",
            validation_detail=detail,
        )
        return job, plan

    @counted("status_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _status(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        body = self.status_json(job, time.monotonic(), with_logs=_wants_logs(request))
        return json_response(body, status=200 if body["status"] == "COMPLETED" else 202)

    @counted("status_stream_requests")
    @authenticated
    @held_while_silent
    async def _status_stream(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        with_logs = _wants_logs(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        while True:
            # Gone silent mid-stream: no event until it speaks again (or the client leaves).
            if not await self.silence.hold(request):
                return response
            now = time.monotonic()
            body = self.status_json(job, now, with_logs=with_logs)
            await response.write(b"data: " + orjson.dumps(body) + b"\n\n")
            if body["status"] == "COMPLETED":
                break
            # Wake at the next status change, and at least every 0.25 s to notice a cancel.
            next_change = min(
                (t for t, _ in self.current_lifecycle().points(job) if t > now), default=now
            )
            await asyncio.sleep(min(max(next_change - now, 0.005), 0.25))
        await response.write_eof()
        return response

    @counted("result_requests")
    @authenticated
    @held_while_silent
    @poll_faults
    async def _result(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        outcome = job.outcome(time.monotonic())
        if outcome is None:
            return self.error_response(400, "Request is still in progress")
        headers = {"x-fal-request-id": job.id}
        if outcome == "succeeded":
            return json_response(self.result_body(job), headers=headers)
        failure = self.failure(job, outcome)
        headers["X-Fal-Error-Type"] = failure.error_type
        return json_response(failure.body, status=failure.http_status, headers=headers)

    @counted("cancels")
    @authenticated
    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request, missing=json_response({"status": "NOT_FOUND"}, status=404))
        now = time.monotonic()
        if job.outcome(now) is not None:
            return json_response({"status": "ALREADY_COMPLETED"}, status=400)
        # A cancelled request completes at once with an error (and its ERROR webhook).
        self.cancel_job(job, now)
        return json_response({"status": "CANCELLATION_REQUESTED"}, status=202)


def create_fal_app(config: SimulatorConfig | None = None) -> web.Application:
    """Build the fal simulator application."""
    return FalSimulator(config).build_app()
