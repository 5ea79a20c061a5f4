"""The output store: the one boundary to where archived bytes are kept, over obstore, one code
path for the filesystem (`file:///path`, obstore's LocalStore) and S3 (`s3://bucket/prefix`).

Objects are written from a stream: S3 gets a multipart upload, the filesystem a temporary file
renamed into place, and a stream that fails (too large, connection lost) leaves no object behind
(obstore aborts the upload). A key is written whole or not at all, so writing the same key again
is harmless. obstore's exceptions are translated here:

    StorageError            the store failed (unreachable, refused, misconfigured)
    └── StoredObjectMissing no object under that key
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import LocalStore, S3Store

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import S3Config

READ_CHUNK_BYTES = 256 * 1024


class StorageError(Exception):
    """The output store failed."""


class StoredObjectMissing(StorageError):
    """No object under the key."""


@dataclass(frozen=True)
class S3Credentials:
    """The standard AWS settings, read by service.config and handed over explicitly."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


class OutputStorage:
    """Puts and gets archived outputs by key (`{job_id}/{index}`)."""

    def __init__(self, store: LocalStore | S3Store, *, description: str) -> None:
        self._store = store
        self.description = description  # where, without credentials (logs, startup line)

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Writes the whole stream under `key`, replacing what was there; an exception raised
        by the stream propagates unchanged, with nothing written."""
        try:
            await obstore.put_async(self._store, key, chunks)
        except BaseError as exc:
            raise StorageError(f"storing {key} in {self.description} failed: {exc}") from exc
        except OSError as exc:  # obstore's filesystem and I/O errors
            raise StorageError(f"storing {key} in {self.description} failed: {exc}") from exc

    async def open(self, key: str) -> tuple[int, AsyncIterator[bytes]]:
        """The object's size and its bytes as a stream."""
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError as exc:
            raise StoredObjectMissing(f"no object {key} in {self.description}") from exc
        except (BaseError, OSError) as exc:
            raise StorageError(f"reading {key} from {self.description} failed: {exc}") from exc
        return int(result.meta["size"]), self._chunks(key, result.stream(READ_CHUNK_BYTES))

    async def _chunks(self, key: str, stream: BytesStream) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield bytes(chunk)
        except (BaseError, OSError) as exc:
            raise StorageError(f"reading {key} from {self.description} failed: {exc}") from exc


def open_storage(url: str, *, s3: S3Credentials) -> OutputStorage | None:
    """The store `OUTPUT_STORE_URL` names; None for `none` (nothing is archived)."""
    if url == "none":
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        return OutputStorage(LocalStore(Path(parts.path), mkdir=True), description=url)
    if parts.scheme == "s3":
        config: S3Config = {}
        if s3.access_key_id is not None:
            config["access_key_id"] = s3.access_key_id
        if s3.secret_access_key is not None:
            config["secret_access_key"] = s3.secret_access_key
        if s3.region is not None:
            config["region"] = s3.region
        if s3.endpoint_url is not None:
            config["endpoint"] = s3.endpoint_url
        store = S3Store(
            parts.netloc,
            prefix=parts.path.strip("/") or None,
            config=config,
            client_options={
                "allow_http": bool(s3.endpoint_url and s3.endpoint_url.startswith("http:"))
            },
        )
        return OutputStorage(store, description=url)
    raise StorageError(f"unknown output store {url!r}")
