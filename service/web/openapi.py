"""The OpenAPI 3.1 document of /v1/*, its component schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from schemas.audit import CheckpointList, JobAudit
from schemas.errors import ErrorBody
from schemas.events import EventList
from schemas.jobs import Job, JobCreate, JobList
from schemas.routing import RoutedInput
from schemas.webhooks import WebhookDelivery, WebhookDeliveryList, WebhookRecover, WebhookRecovered

_ERROR_STATUSES = ("400", "401", "404", "409", "413", "422", "503")
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_WEBHOOK_ID = {"name": "webhook_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^msg_[0-9]+$"},
               "description": "the delivery's Standard Webhooks `webhook-id`"}  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _answers(status: str, schema: str, description: str, **more: Any) -> dict[str, Any]:
    error = _json(_ref("ErrorBody"), "error")
    return {
        status: _json(_ref(schema), description),
        **more,
        **dict.fromkeys(_ERROR_STATUSES, error),
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


def _jobs_paths() -> dict[str, Any]:
    key = {"name": "Idempotency-Key", "in": "header", "required": False,
           "schema": {"type": "string", "minLength": 1, "maxLength": 255}}  # fmt: skip
    page = [
        _query("provider", {"type": "string"}),
        _query("status", {"type": "string"}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
        _query("cursor", {"type": "string"}),
        {**_query("q", {"type": "string", "maxLength": 200}),
         "description": "a job id, or text that a key or a scalar value of the job's metadata "
                        "contains (case-insensitive, at any depth)"},
    ]  # fmt: skip
    return {
        "/v1/jobs": {
            "post": {
                "summary": "Create a job",
                "description": "With `provider` `auto`, `model` is a routed model (`ROUTES`) and "
                               "`input` its common input (`RoutedInput`).",
                "parameters": [key],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("JobCreate")}}},
                "responses": _answers("202", "Job", "accepted",
                                      **{"200": _json(_ref("Job"), "idempotent replay")}),
            },
            "get": {"summary": "List jobs, newest first", "parameters": page,
                    "responses": _answers("200", "JobList", "a page of jobs")},
        },
        "/v1/jobs/{job_id}": {"get": {"summary": "Get a job", "parameters": [_JOB_ID],
                                      "responses": _answers("200", "Job", "the job")}},
        "/v1/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a job", "parameters": [_JOB_ID],
            "responses": _answers("202", "Job", "cancellation recorded")}},
        "/v1/jobs/{job_id}/outputs/{index}": _output_path(),
    }  # fmt: skip


def _output_path() -> dict[str, Any]:
    index = {
        "name": "index",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
    if_none_match = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    }
    etag = {
        "ETag": {
            "description": 'the output\'s sha256, quoted: "<sha256>"',
            "schema": {"type": "string"},
        }
    }
    error = _json(_ref("ErrorBody"), "error")
    return {"get": {
        "summary": "An archived output's bytes (404 output_not_archived before archiving, "
                   "output_not_found for an unknown job or index)",
        "parameters": [_JOB_ID, index, if_none_match],
        "responses": {
            "200": {"description": "the archived bytes, with Content-Type and Content-Length",
                    "headers": etag,
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "304": {"description": "If-None-Match matched the ETag", "headers": etag},
            **dict.fromkeys(_ERROR_STATUSES, error),
        },
    }}  # fmt: skip


def _history_paths() -> dict[str, Any]:
    resume = [
        _query("job_id", {"type": "string"}),
        _query("after", {"type": "integer", "minimum": 0}),
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0}},
    ]
    stream = {"description": "an event stream; each message's id is the event id, its data the Event",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}  # fmt: skip
    error = _json(_ref("ErrorBody"), "error")
    return {
        "/v1/jobs/{job_id}/events": {"get": {
            "summary": "A job's audit trail", "parameters": [_JOB_ID],
            "responses": _answers("200", "EventList", "events in order")}},
        "/v1/jobs/{job_id}/webhooks": {"get": {
            "summary": "The job's client webhook deliveries, with every attempt",
            "parameters": [_JOB_ID],
            "responses": _answers("200", "WebhookDeliveryList", "deliveries")}},
        "/v1/jobs/{job_id}/webhooks/{webhook_id}/retry": {"post": {
            "summary": "One more attempt of a client webhook now, with the same webhook-id",
            "description": "202 with the delivery once the requeue is committed (recorded as "
                           "the job's event `webhook_retry_requested`). A delivered, failed or "
                           "stopped delivery gets exactly one more attempt; one waiting for its "
                           "next scheduled retry is made due now. 409 `webhook_in_flight` while "
                           "an attempt is under way; 404 for an unknown job or webhook id.",
            "parameters": [_JOB_ID, _WEBHOOK_ID],
            "responses": _answers("202", "WebhookDelivery", "requeued")}},
        "/v1/webhooks/recover": {"post": {
            "summary": "Attempt again every client webhook that ended failed since a time",
            "description": "Each delivery that ended `failed` at or after `since` gets one more "
                           "attempt now with its original webhook-id and body, recorded as its "
                           "job's event `webhook_retry_requested`; 202 once committed.",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("WebhookRecover")}}},
            "responses": _answers("202", "WebhookRecovered", "requeued")}},
        "/v1/events/stream": {"get": {
            "summary": "Server-sent events of the audit trail, live", "parameters": resume,
            "responses": {"200": stream, **dict.fromkeys(_ERROR_STATUSES, error)}}},
    }  # fmt: skip


def _audit_paths() -> dict[str, Any]:
    page = [
        _query("after", {"type": "integer", "minimum": 0}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ]
    return {
        "/v1/audit/checkpoints": {"get": {
            "summary": "The audit checkpoints, oldest first, after a checkpoint id",
            "parameters": page,
            "responses": _answers("200", "CheckpointList", "checkpoints")}},
        "/v1/jobs/{job_id}/audit": {"get": {
            "summary": "Verification of the job's audit chain", "parameters": [_JOB_ID],
            "responses": _answers("200", "JobAudit", "verified, pending or failed")}},
    }  # fmt: skip


@cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 of /v1/*."""
    _, defs = models_json_schema(
        [
            (m, "serialization")
            for m in (
                Job,
                JobList,
                EventList,
                ErrorBody,
                WebhookDeliveryList,
                WebhookDelivery,
                WebhookRecovered,
                CheckpointList,
                JobAudit,
            )
        ]
        + [(JobCreate, "validation"), (RoutedInput, "validation"), (WebhookRecover, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Image jobs service", "version": "1"},
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {**_jobs_paths(), **_history_paths(), **_audit_paths()},
    }
