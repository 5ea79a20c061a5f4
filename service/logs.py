"""Structured logging: JSON lines off a terminal, console on one, secrets never written.

Context (`request_id`, `job_id`, `provider`) is bound through contextvars at the edges
(HTTP middleware, workers), so every line of a request or a job carries it. Event names are
stable snake_case (`job_created`, `webhook_rejected`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear, at any depth.
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|signature|^key$|_key$|dsn|cookie)",
    re.IGNORECASE,
)
# Secrets embedded in free text: bearer/basic/key credentials, URL passwords, per-job
# callback tokens in URL paths, whsec_ keys.
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer|basic|key)\s+[A-Za-z0-9._~+/:=-]{6,}"), r"\1 " + REDACTED),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(/callbacks/[a-z]+/[A-Za-z0-9_]+/)[A-Za-z0-9_-]+"), r"\1" + REDACTED),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_" + REDACTED),
)


def redact_text(text: str) -> str:
    """Masks credentials that appear inside a string."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value is not None and key not in _NOT_SECRET:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


# Keys matched by the pattern that carry no secret and are useful to read.
_NOT_SECRET = frozenset({"idempotency_key_present", "token_present"})


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last line of defence that keeps secrets out of every log line."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


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
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; modules call this at use time, not import time, where they can."""
    return structlog.get_logger(name)
