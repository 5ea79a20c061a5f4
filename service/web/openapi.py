"""The OpenAPI 3.1 document of /v1/*, its component schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from schemas.audit import CheckpointList, JobAudit
from schemas.errors import ErrorBody
from schemas.events import EventList
from schemas.jobs import IDEMPOTENCY_KEY_PATTERN, PROVIDERS, Job, JobCreate, JobList, JobStatus
from schemas.model_inputs import MODELS
from schemas.routing import ROUTED_MODELS, RoutedInput
from schemas.webhooks import WebhookDelivery, WebhookDeliveryList, WebhookRecover, WebhookRecovered
from service.web.jobs_api import JOB_ID_PATTERN

_ERROR_STATUSES = ("400", "401", "404", "409", "413", "422", "503")
_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": JOB_ID_PATTERN.pattern}}  # fmt: skip
_WEBHOOK_ID = {"name": "webhook_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^msg_[0-9]+$"},
               "description": "the delivery's Standard Webhooks `webhook-id`"}  # fmt: skip
#: The largest event id a resume point may name (bigint).
_MAX_EVENT_ID = 2**63 - 1


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


#: What a created job's id leads to (OpenAPI links, so that clients and stateful test tools
#: follow them): each operation on one job.
_JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (
        ("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("ListJobEvents", "listJobEvents"),
        ("ListJobWebhooks", "listJobWebhooks"), ("GetJobAudit", "getJobAudit"),
    )
}  # fmt: skip


def _created() -> dict[str, Any]:
    answers = _answers("202", "Job", "accepted", **{"200": _json(_ref("Job"), "idempotent replay")})
    for status in ("200", "202"):
        answers[status] = {**answers[status], "links": _JOB_LINKS}
    return answers


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


def _jobs_paths() -> dict[str, Any]:
    key = {"name": "Idempotency-Key", "in": "header", "required": False,
           "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                      "pattern": IDEMPOTENCY_KEY_PATTERN.pattern}}  # fmt: skip
    page = [
        _query("provider", {"type": "string", "enum": list(PROVIDERS)}),
        _query("status", {"type": "string", "enum": [s.value for s in JobStatus]}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
        {**_query("cursor", {"type": "string", "pattern": JOB_ID_PATTERN.pattern}),
         "description": "the `next_cursor` of the previous page"},
        {**_query("q", {"type": "string", "maxLength": 200, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}),
         "description": "a job id, or text that a key or a scalar value of the job's metadata "
                        "contains (case-insensitive, at any depth)"},
    ]  # fmt: skip
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "createJob", "summary": "Create a job",
                "description": "With `provider` `auto`, `model` is a routed model (`ROUTES`) and "
                               "`input` its common input (`RoutedInput`).",
                "parameters": [key],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("JobRequest")}}},
                "responses": _created(),
            },
            "get": {"operationId": "listJobs", "summary": "List jobs, newest first",
                    "parameters": page,
                    "responses": _answers("200", "JobList", "a page of jobs")},
        },
        "/v1/jobs/{job_id}": {"get": {"operationId": "getJob", "summary": "Get a job",
                                      "parameters": [_JOB_ID],
                                      "responses": _answers("200", "Job", "the job")}},
        "/v1/jobs/{job_id}/cancel": {"post": {
            "operationId": "cancelJob", "summary": "Cancel a job", "parameters": [_JOB_ID],
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
        "operationId": "getJobOutput",
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
        _query("after", {"type": "integer", "minimum": 0, "maximum": _MAX_EVENT_ID}),
        {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": {"type": "integer", "minimum": 0, "maximum": _MAX_EVENT_ID},
        },
    ]
    message = {"type": "object", "properties": {
        "id": {"type": "string", "description": "the event id"},
        "event": {"type": "string"}, "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": _ref("Event")}}}  # fmt: skip
    stream = {"description": "an event stream; each message's id is the event id, its data the Event",
              "content": {"text/event-stream": {"schema": message}}}  # fmt: skip
    error = _json(_ref("ErrorBody"), "error")
    return {
        "/v1/jobs/{job_id}/events": {"get": {
            "operationId": "listJobEvents", "summary": "A job's audit trail", "parameters": [_JOB_ID],
            "responses": _answers("200", "EventList", "events in order")}},
        "/v1/jobs/{job_id}/webhooks": {"get": {
            "operationId": "listJobWebhooks",
            "summary": "The job's client webhook deliveries, with every attempt",
            "parameters": [_JOB_ID],
            "responses": _answers("200", "WebhookDeliveryList", "deliveries")}},
        "/v1/jobs/{job_id}/webhooks/{webhook_id}/retry": {"post": {
            "operationId": "retryJobWebhook",
            "summary": "One more attempt of a client webhook now, with the same webhook-id",
            "description": "202 with the delivery once the requeue is committed (recorded as "
                           "the job's event `webhook_retry_requested`). A delivered, failed or "
                           "stopped delivery gets exactly one more attempt; one waiting for its "
                           "next scheduled retry is made due now. 409 `webhook_in_flight` while "
                           "an attempt is under way; 404 for an unknown job or webhook id.",
            "parameters": [_JOB_ID, _WEBHOOK_ID],
            "responses": _answers("202", "WebhookDelivery", "requeued")}},
        "/v1/webhooks/recover": {"post": {
            "operationId": "recoverWebhooks",
            "summary": "Attempt again every client webhook that ended failed since a time",
            "description": "Each delivery that ended `failed` at or after `since` gets one more "
                           "attempt now with its original webhook-id and body, recorded as its "
                           "job's event `webhook_retry_requested`; 202 once committed.",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("WebhookRecover")}}},
            "responses": _answers("202", "WebhookRecovered", "requeued")}},
        "/v1/events/stream": {"get": {
            "operationId": "streamEvents", "summary": "Server-sent events of the audit trail, live", "parameters": resume,
            "responses": {"200": stream, **dict.fromkeys(_ERROR_STATUSES, error)}}},
    }  # fmt: skip


def _audit_paths() -> dict[str, Any]:
    page = [
        _query("after", {"type": "integer", "minimum": 0, "maximum": 2**62}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ]
    return {
        "/v1/audit/checkpoints": {"get": {
            "operationId": "listCheckpoints",
            "summary": "The audit checkpoints, oldest first, after a checkpoint id",
            "parameters": page,
            "responses": _answers("200", "CheckpointList", "checkpoints")}},
        "/v1/jobs/{job_id}/audit": {"get": {
            "operationId": "getJobAudit", "summary": "Verification of the job's audit chain", "parameters": [_JOB_ID],
            "responses": _answers("200", "JobAudit", "verified, pending or failed")}},
    }  # fmt: skip


def _job_request(defs: dict[str, Any], refs: dict[Any, Any]) -> dict[str, Any]:
    """`POST /v1/jobs`'s body exactly: one variant per provider model, its `input` that model's
    own schema, and one per routed model (`provider` `auto`, the common input)."""
    envelope = defs["JobCreate"]["properties"]
    shared = {"webhook_url": envelope["webhook_url"], "metadata": envelope["metadata"]}

    def variant(provider: str, model: dict[str, Any], input_ref: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object", "additionalProperties": False,
            "required": ["provider", "model", "input"],
            "properties": {"provider": {"const": provider}, "model": model, "input": input_ref,
                           **shared},
        }  # fmt: skip

    variants = [
        variant(provider, {"const": model}, refs[(spec.input_model, "validation")])
        for (provider, model), spec in sorted(MODELS.items())
    ]
    routed = {"type": "string", "enum": sorted(ROUTED_MODELS)}
    variants.append(variant("auto", routed, refs[(RoutedInput, "validation")]))
    return {"oneOf": variants, "description": JobCreate.__doc__ or ""}


#: What every string a client sends must match: PostgreSQL cannot store U+0000 (NUL), so the API
#: refuses it anywhere in a body (service.web.bodies.read_json_object) and the document says so.
NO_NUL = "^[^\\x00]*$"
#: Any JSON value without NUL in its strings or keys (a job's free-form `metadata`).
_JSON_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "propertyNames": {"pattern": NO_NUL},
         "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ]
}  # fmt: skip


def _refuse_nul(schema: Any) -> None:
    """Adds NO_NUL to each free string and object key of a request schema, in place; a free
    object's values become JsonValue."""
    if isinstance(schema, list):
        for item in schema:
            _refuse_nul(item)
        return
    if not isinstance(schema, dict):
        return
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "string" in kinds and not {"pattern", "enum", "const", "format"} & schema.keys():
        schema["pattern"] = NO_NUL
    if "object" in kinds and schema.get("additionalProperties") is True:
        schema["propertyNames"] = {"pattern": NO_NUL}
        schema["additionalProperties"] = {"$ref": "#/components/schemas/JsonValue"}
    for value in schema.values():
        _refuse_nul(value)


def _request_schema_names(schemas: dict[str, Any], roots: list[str]) -> set[str]:
    """The component schemas a request body can reach from `roots` through $ref."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    visit(schemas[name])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for root in roots:
        found.add(root)
        visit(schemas[root])
    return found


@cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 of /v1/*."""
    answers: list[type[BaseModel]] = [
        Job, JobList, EventList, ErrorBody, WebhookDeliveryList, WebhookDelivery,
        WebhookRecovered, CheckpointList, JobAudit,
    ]  # fmt: skip
    requests: list[type[BaseModel]] = [
        JobCreate, RoutedInput, WebhookRecover, *(spec.input_model for spec in MODELS.values()),
    ]  # fmt: skip
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "serialization") for m in answers), *((m, "validation") for m in requests),
    ]  # fmt: skip
    refs, defs = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    schemas = defs["$defs"]
    schemas["JobRequest"] = _job_request(schemas, refs)
    for name in _request_schema_names(schemas, ["JobRequest", "WebhookRecover"]):
        _refuse_nul(schemas[name])
    schemas["JsonValue"] = _JSON_VALUE
    return {
        "openapi": "3.1.0",
        "info": {"title": "Image jobs service", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {**_jobs_paths(), **_history_paths(), **_audit_paths()},
    }
