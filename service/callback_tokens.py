"""The per-job callback token: made when a submission starts, carried in the callback URL given
to the provider, stored only as its hash, and checked by the callback receiver."""

from __future__ import annotations

import hashlib
import secrets


def new_callback_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_callback_token(token: str) -> str:
    """What the database keeps (a leaked row does not give a usable callback URL)."""
    return hashlib.sha256(token.encode()).hexdigest()


def callback_url(base_url: str, *, provider: str, job_id: str, token: str) -> str:
    """The URL a provider calls back: served by service.web.callbacks_api."""
    return f"{base_url.rstrip('/')}/callbacks/{provider}/{job_id}/{token}"
