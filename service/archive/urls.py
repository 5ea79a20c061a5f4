"""What a provider's output URL says about itself, and how it may be shown.

Signed URLs carry their expiry in the query: Scenario's (CloudFront style) `Expires=<epoch>`,
S3 presigned `X-Amz-Date=<yyyymmddThhmmssZ>&X-Amz-Expires=<seconds>`. The query also carries
the signature, so a URL is shown (events, logs, failure reasons) without its query.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit


def expires_at(url: str) -> datetime | None:
    """When the URL stops working, if it says; None when it does not (or says it unreadably)."""
    params = {k.lower(): v[-1] for k, v in parse_qs(urlsplit(url).query).items() if v}
    try:
        if "expires" in params:
            return datetime.fromtimestamp(int(params["expires"]), UTC)
        if "x-amz-date" in params and "x-amz-expires" in params:
            signed = datetime.strptime(params["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed + timedelta(seconds=int(params["x-amz-expires"]))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def shown(url: str) -> str:
    """The URL without its query and fragment (where signatures and tokens live) nor any
    user:password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"
