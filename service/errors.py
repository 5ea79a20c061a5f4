"""The service's exception hierarchy; the web layer maps each to its contract status and code.

    ServiceError                  (500 internal_error)
    ├── BadRequest                (400 bad_request / invalid_json)
    ├── Unauthorized              (401 unauthorized / invalid_signature)
    ├── NotFound                  (404 not_found)
    ├── Conflict                  (409 job_finished, ...)
    ├── PayloadTooLarge           (413 payload_too_large)
    ├── ValidationFailed          (422 validation_failed, idempotency_key_reused, ...)
    └── DatabaseUnavailable       (503 database_unavailable)

Foreign exceptions (asyncpg, OSError, httpx) are translated into these at the boundary where
they are raised (`raise ... from exc`), so handlers only ever see this hierarchy.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_failed"


class DatabaseUnavailable(ServiceError):
    status = 503
    code = "database_unavailable"

    def __init__(self, message: str = "the database is unreachable; retry later") -> None:
        super().__init__(message)
