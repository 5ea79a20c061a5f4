"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from schemas.errors import ErrorBody
from schemas.events import EventList
from schemas.jobs import Job, JobCreate, JobList
from service import metrics
from service.db.database import Database
from service.web.middleware import json_response


class OpsApi:
    """/healthz, /readyz, /metrics and /openapi.json."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
        ]

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        await self.db.ping()  # DatabaseUnavailable -> 503 through the error middleware
        return json_response({"status": "ready"})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def openapi(self, _request: web.Request) -> web.Response:
        return json_response(openapi_document())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 of /v1/*, with the component schemas taken from the pydantic models."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in (Job, JobList, EventList, ErrorBody)]
        + [(JobCreate, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    error = _json(_ref("ErrorBody"), "error")
    errors = {
        "400": error,
        "401": error,
        "404": error,
        "409": error,
        "413": error,
        "422": error,
        "503": error,
    }
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Image jobs service", "version": "1"},
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": bearer,
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Create a job",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JobCreate")}},
                    },
                    "responses": {
                        "202": _json(_ref("Job"), "accepted"),
                        "200": _json(_ref("Job"), "idempotent replay"),
                        **errors,
                    },
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": [
                        {"name": "provider", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(_ref("JobList"), "a page of jobs"), **errors},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "Get a job",
                    "parameters": [job_id],
                    "responses": {"200": _json(_ref("Job"), "the job"), **errors},
                },
            },
            "/v1/jobs/{job_id}/events": {
                "get": {
                    "summary": "A job's audit trail",
                    "parameters": [job_id],
                    "responses": {"200": _json(_ref("EventList"), "events in order"), **errors},
                },
            },
            "/v1/jobs/{job_id}/webhooks": {
                "get": {
                    "summary": "The job's client webhook deliveries, with every attempt",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "deliveries": {"type": "array", "items": {"type": "object"}}
                                },
                            },
                            "deliveries",
                        ),
                        **errors,
                    },
                }
            },
            "/v1/events/stream": {
                "get": {
                    "summary": "Server-sent events of the audit trail, live",
                    "parameters": [
                        {"name": "job_id", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "an event stream; each message's id is the event id, its data the Event",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **errors,
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job",
                    "parameters": [job_id],
                    "responses": {"202": _json(_ref("Job"), "cancellation recorded"), **errors},
                },
            },
        },
    }
