"""Structured logging: JSON lines off a terminal, console on one, secrets never written.

Context (`request_id`, `job_id`, `provider`) is bound through contextvars at the edges
(HTTP middleware, workers), so every line of a request or a job carries it. Event names are
stable snake_case (`job_created`, `webhook_rejected`).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear, at any depth.
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|signature|^key$|_key$|dsn|cookie"
    r"|callback_url|fal_webhook)",
    re.IGNORECASE,
)

# Percent-encoding at any depth (`%2F`, `%252F`, `%25252F`, either case) of one character.
_PCT = r"%(?:25)*"
_SLASH = rf"(?:\\?/|{_PCT}2[fF])"  # also `\/` (JSON that escapes slashes)
# A value runs until a character that cannot be part of it, unencoded or encoded.
_VALUE = rf"(?:[A-Za-z0-9_~.+\-]|{_PCT}[0-9A-Fa-f]{{2}})+"
# Query parameters whose whole value is a secret (or a URL that may carry one): the name ends
# in one of these words (`fal_webhook`, `token`, `api_key`, `X-Amz-Signature`, `sig`...).
_HIDDEN_PARAM_NAME = (
    r"[A-Za-z0-9_.\-]*?(?:token|secret|signature|sig|password|passwd|pwd|credential|key"
    r"|webhook|callback)(?:_?ur[il])?"
)

# Secrets embedded in free text, each as written and percent-encoded (once, twice, lowercase):
# secret query parameters, per-job callback tokens in URL paths, bearer/basic/key credentials,
# URL passwords, whsec_ keys, Standard Webhooks signatures, fal's hex Ed25519 signatures.
_SECRET_TEXT = (
    (
        re.compile(
            rf"((?:[?&;]|{_PCT}(?:3[fF]|26)){_HIDDEN_PARAM_NAME}(?:=|{_PCT}3[dD]))"
            rf"(?:(?!{_PCT}26)[^&\s\"'<>#])+",
            re.IGNORECASE,
        ),
        r"\1" + REDACTED,
    ),
    (
        re.compile(rf"(callbacks{_SLASH}[a-z]+{_SLASH}[a-z0-9_]+{_SLASH}){_VALUE}", re.I),
        r"\1" + REDACTED,
    ),
    (
        re.compile(rf"\b(bearer|basic|key)(\s+|{_PCT}20|\+)[A-Za-z0-9._~+/:=%-]{{6,}}", re.I),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
    (
        re.compile(rf"({_PCT}3a(?:{_PCT}2f){{2}}[^:/@\s%]*{_PCT}3a).+?({_PCT}40)", re.I),
        r"\1" + REDACTED + r"\2",
    ),
    (re.compile(rf"whsec_(?:[A-Za-z0-9+/=]|{_PCT}[0-9A-Fa-f]{{2}})+"), "whsec_" + REDACTED),
    (
        re.compile(rf"\bv1(,|{_PCT}2[cC])(?:[A-Za-z0-9+/=]|{_PCT}[0-9A-Fa-f]{{2}}){{20,}}"),
        r"v1\1" + REDACTED,
    ),
    (re.compile(r"\b[0-9a-fA-F]{128}\b"), REDACTED),
)


# Text that none of _SECRET_TEXT can match, recognised by one cheap test: every pattern needs a
# character outside this set (one of `?&;%/,+@`, a backslash or whitespace), the literal
# `whsec_`, or 128 hex digits in a row. Most logged values (ids, names, statuses, timestamps)
# are such text, and skip the eight substitutions (75 -> 4 us per webhook_recorded line).
_PLAIN = re.compile(r"[A-Za-z0-9_.:\-]{0,127}")


def redact_text(text: str) -> str:
    """Masks credentials that appear inside a string."""
    if _PLAIN.fullmatch(text) and "whsec_" not in text:
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)  # keys are the code's field and header names: few, repeated
def is_secret_key(key: str) -> bool:
    """Whether a value named `key` (a log field, a header, a route's variable) is a secret."""
    return bool(_SECRET_KEY.search(key)) and key not in _NOT_SECRET


def redact_field(key: str, value: Any) -> Any:
    """A field's value as it may be written: the whole value when `key` names a secret,
    otherwise its text (at any depth) cleaned of credentials (log lines, span attributes)."""
    if value is not None and is_secret_key(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_field(key, v) for v in value]
    return _redact_object(value)


def _redact_object(value: Any) -> Any:
    """Any other object (an exception, a URL object, bytes) is rendered by its str or repr: if
    either carries a secret, the line gets the redacted text instead of the object."""
    try:
        texts = (str(value), repr(value))
    except Exception:
        return value
    for text in texts:
        redacted = redact_text(text)
        if redacted != text:
            return redacted
    return value


# Keys matched by the pattern that carry no secret and are useful to read.
_NOT_SECRET = frozenset({"idempotency_key_present", "token_present"})


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last line of defence that keeps secrets out of every log line."""
    for key in list(event_dict):
        event_dict[key] = redact_field(key, event_dict[key])
    return event_dict


def _redact_record(record: logging.LogRecord) -> None:
    """Redacts a standard library record where it is made, so every handler (ours, pytest's,
    logging's last resort) only ever sees the redacted message and traceback."""
    if not isinstance(record.msg, Mapping):
        try:
            message = record.getMessage()
        except Exception:
            message = None  # a broken format: left for the handler to report
        if message is not None:
            redacted = redact_text(message)
            if redacted != message or record.args:
                record.msg, record.args = redacted, ()
    exc_info = record.exc_info
    if exc_info and exc_info[0] is not None:
        record.exc_text = redact_text("".join(traceback.format_exception(*exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def install_record_redaction() -> None:
    """Makes every standard library log record of the process redacted at creation (once)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# Libraries whose own lines say nothing the service's events do not say better, and whose
# INFO lines would carry URLs (httpx logs every request's full URL): only their problems pass.
# The service logs its provider requests itself (`provider_http_request`, debug, no query).
QUIET_LOGGERS = ("aiohttp.access", "httpx", "httpcore")


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(*, level: str = "info", fmt: str | None = None) -> None:
    """Configures structlog and the standard library's logging once for the process."""
    use_json = (fmt == "json") if fmt else not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the standard library; send them through the same pipeline.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    install_record_redaction()


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; modules call this at use time, not import time, where they can."""
    return structlog.get_logger(name)
