"""The output store: the one boundary to where archived bytes are kept, over obstore, one code
path for the filesystem (`file:///path`, obstore's LocalStore) and S3 (`s3://bucket/prefix`).

Objects are written from a stream: S3 gets a multipart upload, the filesystem a temporary file
renamed into place, and a stream that fails (too large, connection lost) leaves no object behind
(obstore aborts the upload). A key is written whole or not at all, so writing the same key again
is harmless. A process killed mid-write leaves its staging data behind: on the filesystem a
`{key}#{n}` file, removed here by the next successful write of that key; on S3 an incomplete
multipart upload, invisible, that the bucket's lifecycle rule (AbortIncompleteMultipartUpload)
removes. obstore's exceptions are translated here:

    StorageError            the store failed (unreachable, refused, misconfigured)
    └── StoredObjectMissing no object under that key
"""

from __future__ import annotations

import asyncio
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

    def __init__(
        self, store: LocalStore | S3Store, *, description: str, local_root: Path | None = None
    ) -> None:
        self._store = store
        self.description = description  # where, without credentials (logs, startup line)
        self._local_root = local_root  # the folder of a LocalStore

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Writes the whole stream under `key`, replacing what was there; an exception raised
        by the stream propagates unchanged, with nothing written."""
        try:
            await obstore.put_async(self._store, key, chunks)
        except BaseError as exc:
            raise StorageError(f"storing {key} in {self.description} failed: {exc}") from exc
        except OSError as exc:  # obstore's filesystem and I/O errors
            raise StorageError(f"storing {key} in {self.description} failed: {exc}") from exc
        if self._local_root is not None:
            await asyncio.to_thread(_remove_staging_leftovers, self._local_root / key)

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


def _remove_staging_leftovers(path: Path) -> None:
    """obstore's LocalStore stages a streamed write in `{name}#{n}` beside the object and renames
    it into place; a killed writer's staging file stays (and is never listed)."""
    for leftover in path.parent.glob(f"{path.name}#*"):
        if leftover.name.removeprefix(f"{path.name}#").isdigit():
            leftover.unlink(missing_ok=True)


def open_storage(url: str, *, s3: S3Credentials) -> OutputStorage | None:
    """The store `OUTPUT_STORE_URL` names; None for `none` (nothing is archived)."""
    if url == "none":
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        root = Path(parts.path)
        return OutputStorage(LocalStore(root, mkdir=True), description=url, local_root=root)
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
