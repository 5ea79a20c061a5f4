"""The operator page (CONTRACT.md, Operator page): `GET /` and its static files under `/page/`.

The files are package data (service/web/page/), read once when the app is built, and hold no
data and no secret: the page reads everything through /v1/* with the operator's token, so these
routes need none (the token middleware guards /v1/* only). The policy forbids every outside
resource and inline script, so data shown by the page can never run as code even if an escape
were missed; images are fetched with the token and shown from `blob:` URLs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from service.errors import NotFound

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",  # no form is ever submitted: a token must never land in a URL
    "frame-ancestors 'none'",
])  # fmt: skip

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load_files() -> dict[str, _File]:
    files: dict[str, _File] = {}
    for entry in resources.files("service.web").joinpath("page").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[entry.name] = _File(body, _TYPES[suffix], etag)
    return files


class PageApi:
    """`/` (index.html) and `/page/{name}` (its stylesheet and script)."""

    def __init__(self) -> None:
        self.files = _load_files()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/page/{name}", self.asset),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return self._serve(request, "index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html":  # one address for the page: /
            raise NotFound("no such file")
        return self._serve(request, name)

    def _serve(self, request: web.Request, name: str) -> web.Response:
        file = self.files.get(name)  # a known name only: nothing is read from a request path
        if file is None:
            raise NotFound("no such file")
        headers = {
            # Revalidated on every load (cheap: 304 by ETag), so an upgrade shows at once.
            "Cache-Control": "no-cache",
            "ETag": file.etag,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if file.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})
