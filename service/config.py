"""Settings: the one place where the environment is read.

Every other module receives a `Settings` (or the part of it it needs); nothing else calls
`os.environ`. The variable names are fixed by CONTRACT.md.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from schemas.routing import DEFAULT_ROUTES, parse_routes

DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_WEB_CONCURRENCY = 64


class ConfigError(Exception):
    """The environment does not describe a service that may start."""


class Settings(BaseModel):
    """Validated configuration of one service instance."""

    model_config = ConfigDict(frozen=True)

    database_url: SecretStr | None = None
    # A direct connection for LISTEN when DATABASE_URL goes through a pooler in transaction mode
    # (a pooled server connection cannot hold a LISTEN between transactions); unset: the same.
    # Set and different from DATABASE_URL, it also says that DATABASE_URL is such a pooler
    # (database_pooled).
    database_listen_url: SecretStr | None = None
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_base_url: str | None = None
    # HTTP server processes of one `serve`, sharing its port (service.web.processes).
    web_concurrency: int = 1
    api_tokens: tuple[SecretStr, ...] = ()

    krea_api_url: str = "https://api.krea.ai"
    krea_api_token: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    fal_key: SecretStr | None = None
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    scenario_api_url: str = "https://api.cloud.scenario.com/v1"
    scenario_api_key: SecretStr | None = None
    scenario_api_secret: SecretStr | None = None

    client_webhook_secret: SecretStr | None = None
    client_webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    client_webhook_allow_private: bool = False

    # Archived outputs. output_store_url None means file://{data_dir}/outputs (see
    # output_store); the AWS_* values are passed to the S3 client explicitly.
    output_store_url: str | None = None
    output_fetch_allow_private: bool = False
    output_max_bytes: int = Field(default=52_428_800, gt=0)
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None

    # Routed models (ROUTES): each with its providers in order of preference.
    routes: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {m: tuple(p) for m, p in parse_routes(DEFAULT_ROUTES).items()}
    )

    # Reliability knobs (extensions of the contract's table; defaults suit production).
    krea_job_timeout_s: float = Field(default=3600, gt=0)
    fal_job_timeout_s: float = Field(default=3600, gt=0)
    scenario_job_timeout_s: float = Field(default=3600, gt=0)
    webhook_grace_s: float = Field(default=120, gt=0)
    submission_bind_wait_s: float = Field(default=120, ge=0)
    worker_lease_s: float = Field(default=60, gt=0)
    provider_concurrency: int = Field(default=32, ge=1)  # each provider's starting limit
    provider_concurrency_max: int = Field(default=128, ge=1)  # ... and the most it grows to
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_cool_down_s: float = Field(default=30, gt=0)
    stream_heartbeat_s: float = Field(default=15, gt=0)
    # SIGTERM/SIGINT: how long work in flight may take to finish before its leases are
    # released to the other instances (service.web.shutdown).
    shutdown_grace_s: float = Field(default=10, ge=0, le=3600)
    run_workers: bool = True  # false: this instance serves HTTP only (API, callbacks, streams)
    intake_max_batch: int = Field(default=256, ge=1)
    archive_lease_s: float = Field(default=60, gt=0)
    output_fetch_attempts: int = Field(default=5, ge=1)
    output_fetch_backoff_s: float = Field(default=2.0, ge=0)
    archive_concurrency: int = Field(default=16, ge=1)

    # The audit chain: the sealer runs where this is true (one seals at a time across
    # instances); checkpoints every audit_checkpoint_interval_s, signed when a key is given.
    audit_sealer: bool = True
    audit_checkpoint_interval_s: float = Field(default=60, gt=0)
    audit_signing_key: SecretStr | None = None

    # OpenTelemetry tracing (service.tracing): on when OpenTelemetry's own variables name an
    # OTLP endpoint; every OTEL_* variable (endpoint, headers, service name, sampler, batching)
    # is read by OpenTelemetry's SDK itself.
    tracing: bool = False

    log_level: str = "info"
    log_format: str | None = None  # "json" or "console"; None = json unless stdout is a terminal
    db_pool_min: int = Field(default=2, ge=0)
    db_pool_max: int = Field(default=10, ge=1)

    @field_validator("web_concurrency", mode="before")
    @classmethod
    def _process_count(cls, value: object) -> int:
        try:
            count = int(str(value))
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_WEB_CONCURRENCY:
            raise ValueError(
                f"WEB_CONCURRENCY must be a whole number of processes from 1 to "
                f"{MAX_WEB_CONCURRENCY}, not {value!r}"
            )
        return count

    @field_validator("routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: object) -> object:
        if isinstance(value, str):
            return {model: tuple(providers) for model, providers in parse_routes(value).items()}
        return value

    @field_validator("output_store_url")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value is None or value == "none":
            return value
        parts = urlsplit(value)
        if parts.scheme == "s3" and parts.netloc:
            return value.rstrip("/")
        if parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
            return value.rstrip("/")
        raise ValueError("must be file:///absolute/path, s3://bucket[/prefix] or none")

    @field_validator("public_base_url", "krea_api_url", "fal_queue_url", "scenario_api_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("audit_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                raw = base64.b64decode(value.get_secret_value(), validate=True)
            except ValueError as exc:
                raise ValueError("must be base64") from exc
            if len(raw) != 32:
                raise ValueError("must be the base64 of a 32-byte Ed25519 private key")
        return value

    @property
    def base_url(self) -> str:
        """How providers reach this service (callback URLs are built from it)."""
        return self.public_base_url or f"http://{self.host}:{self.port}"

    def job_timeout_s(self, provider: str) -> float:
        """The hard deadline of a job of `provider`, from its creation."""
        timeouts = {
            "krea": self.krea_job_timeout_s,
            "fal": self.fal_job_timeout_s,
            "scenario": self.scenario_job_timeout_s,
        }
        return timeouts[provider]

    @property
    def database_pooled(self) -> bool:
        """DATABASE_URL goes through a pooler in transaction mode (PgBouncer): told by a
        DATABASE_LISTEN_URL of its own, the direct connection that LISTEN needs beside such a
        pooler. Pooled connections then keep nothing between transactions (service.db.database)."""
        url, listen = self.database_url, self.database_listen_url
        if url is None or listen is None:
            return False
        return listen.get_secret_value() != url.get_secret_value()

    @property
    def output_store(self) -> str:
        """Where outputs are archived: `file:///abs/path`, `s3://bucket/prefix` or `none`."""
        if self.output_store_url is not None:
            return self.output_store_url
        return f"file://{self.data_dir.resolve() / 'outputs'}"

    @property
    def auth_required(self) -> bool:
        return bool(self.api_tokens)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Builds settings from environment variables, raising ConfigError with every problem."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        raw: dict[str, object] = {
            "database_url": get("DATABASE_URL"),
            "database_listen_url": get("DATABASE_LISTEN_URL"),
            "data_dir": get("SERVICE_DATA_DIR"),
            "host": get("HOST"),
            "port": get("PORT"),
            "public_base_url": get("PUBLIC_BASE_URL"),
            "web_concurrency": get("WEB_CONCURRENCY"),
            "api_tokens": _split_list(get("API_TOKENS")),
            "krea_api_url": get("KREA_API_URL"),
            "krea_api_token": get("KREA_API_TOKEN"),
            "fal_queue_url": get("FAL_QUEUE_URL"),
            "fal_key": get("FAL_KEY"),
            "fal_jwks_url": get("FAL_JWKS_URL"),
            "scenario_api_url": get("SCENARIO_API_URL"),
            "scenario_api_key": get("SCENARIO_SDK_API_KEY"),
            "scenario_api_secret": get("SCENARIO_SDK_API_SECRET"),
            "client_webhook_secret": get("CLIENT_WEBHOOK_SECRET"),
            "client_webhook_retry_schedule": _split_list(get("CLIENT_WEBHOOK_RETRY_SCHEDULE")),
            "client_webhook_allow_private": get("CLIENT_WEBHOOK_ALLOW_PRIVATE"),
            "output_store_url": get("OUTPUT_STORE_URL"),
            "routes": env.get("ROUTES"),  # set but empty: no routed model
            "output_fetch_allow_private": get("OUTPUT_FETCH_ALLOW_PRIVATE"),
            "output_max_bytes": get("OUTPUT_MAX_BYTES"),
            "aws_access_key_id": get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": get("AWS_SECRET_ACCESS_KEY"),
            "aws_region": get("AWS_REGION"),
            "aws_endpoint_url": get("AWS_ENDPOINT_URL"),
            "archive_lease_s": get("ARCHIVE_LEASE_S"),
            "output_fetch_attempts": get("OUTPUT_FETCH_ATTEMPTS"),
            "output_fetch_backoff_s": get("OUTPUT_FETCH_BACKOFF_S"),
            "archive_concurrency": get("ARCHIVE_CONCURRENCY"),
            "krea_job_timeout_s": get("KREA_JOB_TIMEOUT_S"),
            "fal_job_timeout_s": get("FAL_JOB_TIMEOUT_S"),
            "scenario_job_timeout_s": get("SCENARIO_JOB_TIMEOUT_S"),
            "webhook_grace_s": get("WEBHOOK_GRACE_S"),
            "submission_bind_wait_s": get("SUBMISSION_BIND_WAIT_S"),
            "worker_lease_s": get("WORKER_LEASE_S"),
            "provider_concurrency": get("PROVIDER_CONCURRENCY"),
            "provider_concurrency_max": get("PROVIDER_CONCURRENCY_MAX"),
            "circuit_failure_threshold": get("CIRCUIT_FAILURE_THRESHOLD"),
            "circuit_cool_down_s": get("CIRCUIT_COOL_DOWN_S"),
            "stream_heartbeat_s": get("STREAM_HEARTBEAT_S"),
            "shutdown_grace_s": get("SHUTDOWN_GRACE_S"),
            "run_workers": get("RUN_WORKERS"),
            "intake_max_batch": get("INTAKE_MAX_BATCH"),
            "audit_sealer": get("AUDIT_SEALER"),
            "audit_checkpoint_interval_s": get("AUDIT_CHECKPOINT_INTERVAL_S"),
            "audit_signing_key": get("AUDIT_SIGNING_KEY"),
            "log_level": get("LOG_LEVEL"),
            "log_format": get("LOG_FORMAT"),
            "db_pool_min": get("DB_POOL_MIN"),
            "db_pool_max": get("DB_POOL_MAX"),
            "tracing": _tracing_enabled(get),
        }
        try:
            settings = cls.model_validate({k: v for k, v in raw.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from exc
        settings.check_startable()
        return settings

    def check_startable(self) -> None:
        """Refuses an open API on a non-loopback address (CONTRACT.md, API_TOKENS), and
        several processes on PORT=0 (each would listen on a port of its own)."""
        if self.web_concurrency > 1 and self.port == 0:
            raise ConfigError(
                f"WEB_CONCURRENCY={self.web_concurrency} needs a fixed PORT: with PORT=0 "
                "each process would listen on a different port"
            )
        if not self.api_tokens and not is_loopback_host(self.host):
            raise ConfigError(
                f"API_TOKENS is unset and HOST={self.host} is not a loopback address: "
                "set API_TOKENS, or listen on 127.0.0.1"
            )


#: The one OTLP protocol the service exports with (opentelemetry-exporter-otlp-proto-http).
OTLP_PROTOCOL = "http/protobuf"


def _tracing_enabled(get: Callable[[str], str | None]) -> bool:
    """Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or its traces-only form) is set, unless
    OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. Traces are exported over OTLP/HTTP
    with protobuf: another exporter or protocol asked for is refused rather than ignored."""
    endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter = (get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    disabled = (get("OTEL_SDK_DISABLED") or "").strip().lower() == "true"
    if endpoint is None or disabled or exporter == "none":
        return False
    if exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter}: only otlp (or none) is supported")
    protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is not None and protocol.strip() != OTLP_PROTOCOL:
        raise ConfigError(
            f"OTLP protocol {protocol}: traces are exported with {OTLP_PROTOCOL} only"
        )
    return True


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]
