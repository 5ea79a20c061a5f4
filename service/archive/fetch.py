"""Downloading a provider's output: streamed (never the whole file in memory), hashed and
counted while it streams, cut off past the size limit, refused on non-public addresses.

httpx's API over the httpx-aiohttp transport (as for the providers), with the aiohttp session
given service.netguard's resolver: the address check is made at connect time, on the addresses
the connection uses, and on every redirect hop. Failures become `FetchFailed` with the code the
`output_archive_failed` event carries; their reasons never include the URL's query (where
signed URLs keep their signature).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from service.archive.urls import shown
from service.netguard import NonPublicAddress, PublicOnlyResolver, is_non_public_literal

FETCH_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=10.0, pool=30.0)
HEAD_BYTES = 256 * 1024  # the image header is read from this much of the start
MAX_REDIRECTS = 5


class FetchFailed(Exception):
    """A download that did not give the whole output; `retryable` says whether trying again
    may help."""

    def __init__(self, code: str, reason: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.retryable = retryable


def too_large(max_bytes: int) -> FetchFailed:
    return FetchFailed(
        "output_too_large", f"the output is larger than {max_bytes} bytes", retryable=False
    )


@dataclass
class Download:
    """A response being read: its chunks are hashed and counted as they pass."""

    response: httpx.Response
    max_bytes: int
    content_type: str | None
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_bytes():
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    raise too_large(self.max_bytes)
                self._hash.update(chunk)
                if len(self.head) < HEAD_BYTES:
                    self.head += chunk[: HEAD_BYTES - len(self.head)]
                yield chunk
        except httpx.HTTPError as exc:
            raise FetchFailed(
                "download_failed", f"the download broke off: {type(exc).__name__}", retryable=True
            ) from exc


def _non_public(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NonPublicAddress) or isinstance(
            getattr(seen, "os_error", None), NonPublicAddress
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _private(url: str) -> FetchFailed:
    return FetchFailed(
        "private_address",
        f"{shown(url)} is on a loopback, private or link-local address "
        "(OUTPUT_FETCH_ALLOW_PRIVATE is off)",
        retryable=False,
    )


class _GuardedTransport(httpx.AsyncBaseTransport):
    """Refuses IP literals that are not public (aiohttp does not resolve them, so the resolver
    never sees them), on the first request and on every redirect."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if is_non_public_literal(str(request.url)):
            raise _private(str(request.url))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class OutputFetcher:
    """One pooled client for every download of this instance."""

    def __init__(
        self,
        *,
        max_bytes: int,
        allow_private: bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        if transport is None:
            resolver = None if allow_private else PublicOnlyResolver()
            transport = AiohttpTransport(
                client=lambda: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(resolver=resolver, limit=100)
                )
            )
            if not allow_private:
                transport = _GuardedTransport(transport)
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=FETCH_TIMEOUT,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": "imagejobs-archiver/1"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        """The download of `url` once its answer is a 200 whose announced size is within the
        limit; read it with `Download.chunks()`."""
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise FetchFailed(
                        "download_failed",
                        f"{shown(url)} answered HTTP {response.status_code}",
                        retryable=True,
                    )
                announced = response.headers.get("Content-Length")
                if (
                    announced is not None
                    and announced.isdigit()
                    and int(announced) > self.max_bytes
                ):
                    raise too_large(self.max_bytes)
                content_type = response.headers.get("Content-Type")
                yield Download(
                    response=response,
                    max_bytes=self.max_bytes,
                    content_type=content_type.split(";")[0].strip() if content_type else None,
                )
        except FetchFailed:
            raise
        except httpx.HTTPError as exc:
            if _non_public(exc):
                raise _private(url) from exc
            raise FetchFailed(
                "download_failed",
                f"fetching {shown(url)} failed: {type(exc).__name__}",
                retryable=True,
            ) from exc
