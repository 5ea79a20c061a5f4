"""Normalising provider outputs to `{url, content_type, width, height}`."""

from __future__ import annotations

import mimetypes
from urllib.parse import urlsplit


def content_type_from_url(url: str) -> str | None:
    """The image type its URL's extension names, when it names one."""
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed if guessed and guessed.startswith("image/") else None
