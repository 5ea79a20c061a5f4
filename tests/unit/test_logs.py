"""No secret reaches a log line."""

from __future__ import annotations

import io
import json
import sys

import structlog

from service.logs import REDACTED, configure_logging, get_logger, redact_secrets, redact_text


def test_secret_keys_are_redacted_at_any_depth() -> None:
    event = redact_secrets(None, "info", {
        "event": "x", "api_token": "t0k", "headers": {"Authorization": "Bearer abcdefgh", "Accept": "*/*"},
        "fal_key": "k:s", "signature": "deadbeef", "client_webhook_secret": "whsec_abc", "job_id": "job_1",
        "items": [{"password": "p"}],
    })  # fmt: skip
    assert event["api_token"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert event["fal_key"] == REDACTED
    assert event["signature"] == REDACTED
    assert event["client_webhook_secret"] == REDACTED
    assert event["items"] == [{"password": REDACTED}]
    assert event["job_id"] == "job_1"


def test_secrets_inside_text_are_masked() -> None:
    assert "s3cr3t" not in redact_text("postgresql://user:s3cr3t@db:5432/x")
    assert "abcdef123456" not in redact_text("sent Authorization: Bearer abcdef123456 upstream")
    assert "k3y-value" not in redact_text("header Key k3y-value-0123")
    token = "Zx9_ab-CD0123456789abcdef"
    assert token not in redact_text(f"http://svc/callbacks/krea/job_01ABC/{token}")
    assert "job_01ABC" in redact_text(f"http://svc/callbacks/krea/job_01ABC/{token}")
    assert "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in redact_text(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )


def test_json_lines_with_bound_context(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    structlog.reset_defaults()
    configure_logging(level="info", fmt="json")
    try:
        structlog.contextvars.bind_contextvars(request_id="r-1", job_id="job_1")
        get_logger("t").info("job_created", token="abc123456789", url="https://u:pw@h/x")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        configure_logging(level="warning", fmt="console")
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["event"] == "job_created"
    assert (line["request_id"], line["job_id"], line["level"]) == ("r-1", "job_1", "info")
    assert line["token"] == REDACTED
    assert "pw" not in line["url"]
