"""Prometheus metrics of the service (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_CREATED = Counter(
    "jobs_created_total", "Jobs accepted through the API.", ["provider"], registry=REGISTRY
)
OBSERVATIONS = Counter(
    "job_observations_total",
    "Observations of job statuses, by source and whether they changed the job.",
    ["provider", "source", "applied"],
    registry=REGISTRY,
)

PROVIDER_REQUESTS = Counter(
    "provider_requests_total",
    "Requests sent to providers, by operation (submit, status, cancel).",
    ["provider", "operation"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "provider_callbacks_total",
    "Provider callbacks received, by outcome (applied, ignored, rejected).",
    ["provider", "outcome"],
    registry=REGISTRY,
)

WEBHOOK_MISSES = Counter(
    "provider_webhook_misses_total",
    "Jobs whose terminal state was learned by poll because the provider's webhook did not come.",
    ["provider"],
    registry=REGISTRY,
)

DUE_LAG = Histogram(
    "runner_due_lag_seconds",
    "How late the runner claims a job after its next action was due.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)

AUDIT_EVENTS_SEALED = Counter(
    "audit_events_sealed_total",
    "Events hashed into the audit chain by this instance's sealer.",
    registry=REGISTRY,
)
AUDIT_CHECKPOINTS = Counter(
    "audit_checkpoints_total", "Audit checkpoints made by this instance.", registry=REGISTRY
)
OUTPUTS_ARCHIVED = Counter(
    "outputs_archived_total",
    "Outputs whose archiving ended, by outcome (archived, failed).",
    ["outcome"],
    registry=REGISTRY,
)
ARCHIVE_BACKLOG = Gauge(
    "output_archive_backlog",
    "Outputs of succeeded jobs waiting to be archived (read from the database at each scrape).",
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)


PROVIDER_CONCURRENCY_LIMIT = Gauge(
    "provider_concurrency_limit",
    "Requests this instance lets run at once on the provider (adaptive: grows while it answers, "
    "halves on 429).",
    ["provider"],
    registry=REGISTRY,
)
PROVIDER_REQUESTS_WAITING = Gauge(
    "provider_requests_waiting",
    "Requests of this instance waiting for a slot of the provider's concurrency limit.",
    ["provider"],
    registry=REGISTRY,
)
PROVIDER_CIRCUIT_STATE = Gauge(
    "provider_circuit_state",
    "The provider's circuit breaker on this instance: 0 closed (requests go), 1 half_open "
    "(one probe goes), 2 open (requests are skipped until the cool-down ends).",
    ["provider"],
    registry=REGISTRY,
)
PROVIDER_CIRCUIT_TRANSITIONS = Counter(
    "provider_circuit_transitions_total",
    "Changes of the provider's circuit breaker on this instance, by the state entered.",
    ["provider", "to"],
    registry=REGISTRY,
)

# --- Issue 14: what an operator alerts on ---------------------------------------------------

HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request (errors included), by method, the route's pattern "
    "(`unmatched` when no route matched) and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
CALLBACKS_REJECTED = Counter(
    "provider_callbacks_rejected_total",
    "Provider callbacks rejected, by reason (invalid_callback_token, invalid_signature, "
    "invalid_callback, malformed, payload_too_large, other).",
    ["provider", "reason"],
    registry=REGISTRY,
)
JOBS = Gauge(
    "jobs",
    "Jobs in a non-terminal status (accepted, submitted, queued, running), by provider "
    "(read from the database at each scrape).",
    ["status", "provider"],
    registry=REGISTRY,
)
JOBS_OLDEST_AGE = Gauge(
    "jobs_oldest_age_seconds",
    "Age (since creation) of the oldest job in the non-terminal status, by provider; 0 when "
    "none (read from the database at each scrape).",
    ["status", "provider"],
    registry=REGISTRY,
)
CLIENT_WEBHOOK_ATTEMPTS = Counter(
    "client_webhook_attempts_total",
    "Client webhook delivery attempts of this instance, by outcome (delivered, "
    "failed_retrying, failed_final, stopped_410).",
    ["outcome"],
    registry=REGISTRY,
)
CLIENT_WEBHOOK_BACKLOG = Gauge(
    "client_webhook_backlog",
    "Client webhook deliveries pending (due, leased or waiting for a retry; read from the "
    "database at each scrape).",
    registry=REGISTRY,
)
CLIENT_WEBHOOK_OVERDUE = Gauge(
    "client_webhook_overdue_seconds",
    "How long the most overdue pending client webhook delivery has been due (0 when none is "
    "late; read from the database at each scrape).",
    registry=REGISTRY,
)
LISTEN_RECONNECTS = Counter(
    "listen_reconnects_total",
    "Times this instance's LISTEN connection was established again after it was lost.",
    registry=REGISTRY,
)
