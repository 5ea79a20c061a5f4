"""No secret reaches a log line."""

from __future__ import annotations

import io
import json
import logging
import sys
from urllib.parse import quote, quote_plus

import httpx
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.logs import REDACTED, configure_logging, get_logger, redact_secrets, redact_text
from service.providers.http import loggable_url
from service.web.middleware import loggable_path


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


@pytest.fixture(autouse=True)
def _restored(logging_restored: None) -> None:
    """Tests here reconfigure logging onto a captured stdout (see tests/conftest.py)."""


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


TOKEN = "val0LJxQbpkFbS8xQAJJL-UDdtJvt5xRjKIndpAs690"
CALLBACK = f"http://127.0.0.1:36615/callbacks/fal/job_01M8SKG1PXY9X9FPYX115GSQ1D/{TOKEN}"


@pytest.mark.parametrize(
    "text",
    [
        CALLBACK,
        quote(CALLBACK),  # `/` kept
        quote(CALLBACK, safe=""),
        quote_plus(CALLBACK),
        quote(CALLBACK, safe="").lower(),  # %2f
        quote(quote(CALLBACK, safe=""), safe=""),  # %252F
        quote(quote(quote(CALLBACK, safe=""), safe=""), safe=""),  # %25252F
        CALLBACK.replace("/", "\\/"),  # JSON with escaped slashes
        f'{{"url": "{CALLBACK}"}}',
        f"POST /callbacks/krea/job_01ABC/{TOKEN} HTTP/1.1",
    ],
    ids=["plain", "quote", "quote_all", "quote_plus", "lowercase", "double", "triple", "json", "in_json", "request_line"],
)  # fmt: skip
def test_callback_tokens_are_masked_in_every_encoding(text: str) -> None:
    redacted = redact_text(text)
    assert TOKEN not in redacted
    assert REDACTED in redacted
    assert "job_01" in redacted.lower()  # which job it was stays readable
    assert redact_text(redacted) == redacted  # stdlib lines are redacted twice (record, processor)


def test_the_httpx_request_line_for_a_fal_submission_is_masked() -> None:
    # httpx's own INFO line, as it was printed before the fix.
    line = (
        "HTTP Request: POST http://127.0.0.1:37751/fal-ai/flux/krea?fal_webhook="
        f'{quote(CALLBACK, safe="")} "HTTP/1.1 200 OK"'
    )
    redacted = redact_text(line)
    assert TOKEN not in redacted
    assert redacted == (
        'HTTP Request: POST http://127.0.0.1:37751/fal-ai/flux/krea?fal_webhook=[redacted] "HTTP/1.1 200 OK"'
    )


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"http://h/fal-ai/flux/krea?fal_webhook={CALLBACK}", TOKEN),  # not encoded at all
        (f"http://h/x?a=1&fal_webhook={quote_plus(CALLBACK)}&b=2", TOKEN),
        ("https://cdn/asset.png?Expires=1767225600&Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1e2d3c4b5a6978"),
        ("https://s3/b/k?X-Amz-Credential=AKIAEXAMPLE%2F2026&X-Amz-Signature=abcdef0123456789", "AKIAEXAMPLE"),
        ("https://h/cb?access_token=t0k3n-value-123", "t0k3n-value-123"),
        # a whole URL in a query parameter of another URL, itself encoded
        (quote("http://h/x?api_key=k3y-0123456789&y=1", safe=""), "k3y-0123456789"),
    ],
    ids=["fal_webhook_plain", "fal_webhook_quote_plus", "signed_url", "aws_presigned", "access_token", "nested"],
)  # fmt: skip
def test_secret_query_parameters_are_masked(text: str, secret: str) -> None:
    assert secret not in redact_text(text)
    assert redact_text(redact_text(text)) == redact_text(text)


def test_an_aiohttp_timeout_message_with_the_full_url_is_masked() -> None:
    # aiohttp's ConnectionTimeoutError text, which httpx-aiohttp copies into httpx.ConnectTimeout
    message = f"Connection timeout to host http://fal/fal-ai/flux/krea?fal_webhook={quote(CALLBACK, safe='')}"
    assert TOKEN not in redact_text(message)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=", "K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN"),
        ("v1%2CK5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN%2FH%2FpI4%3D", "K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN"),
        ("X-Fal-Webhook-Signature: " + "ab12" * 32, "ab12" * 32),
        ("secret=whsec_YS10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcy1sZW5ndGg%3D", "YS10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcy1sZW5ndGg"),
        ("whsec_abc%2Bdef%2F0123456789", "0123456789"),
        ("Authorization: Basic%20c2ltLXNjZW5hcmlvLWtleQ==", "c2ltLXNjZW5hcmlvLWtleQ"),
        ("dsn=postgresql%3A%2F%2Fuser%3As3cr3t-pw%40db%2Fx", "s3cr3t-pw"),
    ],
    ids=["standard_webhooks", "standard_webhooks_encoded", "fal_hex", "whsec_encoded_param", "whsec_partly_encoded", "basic_encoded", "dsn_encoded"],
)  # fmt: skip
def test_signatures_and_keys_are_masked_in_text(text: str, secret: str) -> None:
    assert secret not in redact_text(text)
    assert redact_text(redact_text(text)) == redact_text(text)


def test_ordinary_text_is_left_alone() -> None:
    text = 'job_01ABC msg_42 "POST /v1/jobs HTTP/1.1" 202 sha256=' + "0a" * 32
    assert redact_text(text) == text


def test_objects_whose_text_carries_a_secret_are_masked() -> None:
    exc = RuntimeError(f"no answer from {CALLBACK}")
    event = redact_secrets(
        None, "warning", {"event": "x", "error": exc, "url": httpx.URL(CALLBACK), "n": 3}
    )
    assert TOKEN not in str(event["error"]) and TOKEN not in str(event["url"])
    assert event["n"] == 3
    plain = object()
    assert redact_secrets(None, "info", {"event": "x", "thing": plain})["thing"] is plain


def _capture_json(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    structlog.reset_defaults()
    configure_logging(level="debug", fmt="json")
    return out


def _restore() -> None:
    structlog.reset_defaults()
    configure_logging(level="warning", fmt="console")


def test_library_lines_and_tracebacks_are_masked_on_every_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _capture_json(monkeypatch)
    other = io.StringIO()  # a handler that is not ours (pytest's, a library's), plain formatter
    handler = logging.StreamHandler(other)
    handler.setFormatter(logging.Formatter("%(message)s"))  # and the traceback, from exc_text
    library = logging.getLogger("some.library")
    library.addHandler(handler)
    try:
        library.warning("calling %s", f"http://fal/x?fal_webhook={quote(CALLBACK, safe='')}")
        try:
            raise httpx.ConnectTimeout(f"Connection timeout to host {CALLBACK}")
        except httpx.ConnectTimeout:
            library.exception("request failed")
            get_logger("service.test").exception("structlog_failed", url=CALLBACK)
    finally:
        library.removeHandler(handler)
        _restore()
    assert "calling http://fal/x?fal_webhook=[redacted]" in other.getvalue()
    assert TOKEN not in other.getvalue()
    assert TOKEN not in out.getvalue()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "calling http://fal/x?fal_webhook=[redacted]",
        "request failed",
        "structlog_failed",
    ]
    assert "ConnectTimeout" in lines[1]["exception"] and "ConnectTimeout" in lines[2]["exception"]


def test_httpx_and_aiohttp_access_lines_are_off_at_info() -> None:
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("aiohttp.access").getEffectiveLevel() >= logging.WARNING


def test_provider_requests_are_logged_without_their_query() -> None:
    url = httpx.URL(
        "http://u:pw@fal:8080/fal-ai/flux/krea", params={"fal_webhook": CALLBACK, "logs": "1"}
    )
    assert (
        loggable_url(url)
        == "http://fal:8080/fal-ai/flux/krea?fal_webhook=[redacted]&logs=[redacted]"
    )


async def test_the_callback_path_is_logged_without_its_token() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(loggable_path(request))
        return web.Response()

    app = web.Application()
    app.router.add_post("/callbacks/fal/{job_id}/{token}", handler)
    request = make_mocked_request("POST", f"/callbacks/fal/job_01ABC/{TOKEN}", app=app)
    match = await app.router.resolve(request)
    request._match_info = match  # what the app does before calling the handler
    await handler(request)
    assert seen == ["/callbacks/fal/job_01ABC/[redacted]"]
