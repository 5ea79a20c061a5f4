"""The archive's pure pieces and its two boundaries on their own: URL expiry and display,
backoff, keys, ETags, image headers, the downloader (size limit while streaming, announced
size, address guard) and the output store on a folder."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from service.archive.archiver import storage_key
from service.archive.fetch import FetchFailed, OutputFetcher
from service.archive.images import image_size
from service.archive.policy import MAX_DELAY_S, backoff_s, next_attempt_at
from service.archive.storage import S3Credentials, StoredObjectMissing, open_storage
from service.archive.urls import expires_at, shown
from service.web.outputs_api import etag_matches
from simulators.images import solid_jpeg, solid_png

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_expiry_is_read_from_scenario_and_s3_signed_urls() -> None:
    scenario = "https://cdn.test/a.png?Expires=1796212800&Signature=abc&Key-Pair-Id=K"
    s3 = "https://b.s3.test/a.png?X-Amz-Date=20261202T120000Z&X-Amz-Expires=600&X-Amz-Signature=s"
    assert expires_at(scenario) == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert expires_at(s3) == NOW + timedelta(seconds=600)
    assert expires_at("https://cdn.test/a.png") is None
    assert expires_at("https://cdn.test/a.png?Expires=soon") is None
    assert expires_at("https://cdn.test/a.png?Expires=99999999999999999999") is None


def test_urls_are_shown_without_query_nor_credentials() -> None:
    url = "https://user:pw@cdn.test:8443/out/a.png?Expires=1&Signature=secret#frag"
    assert shown(url) == "https://cdn.test:8443/out/a.png"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    for attempts_done in range(1, 6):
        ceiling = 2.0 * 2 ** (attempts_done - 1)
        delays = [backoff_s(attempts_done, base_s=2.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_s(30, base_s=2.0) <= MAX_DELAY_S


def test_retries_stop_when_used_up_or_when_the_url_expires_first() -> None:
    def at(done: int, expiry: datetime | None) -> datetime | None:
        return next_attempt_at(done, max_attempts=3, base_s=10, now=NOW, url_expires_at=expiry)

    retry = at(1, None)
    assert retry is not None and NOW + timedelta(seconds=5) <= retry <= NOW + timedelta(seconds=10)
    assert at(3, None) is None  # used up
    assert at(1, NOW + timedelta(seconds=4)) is None  # expired before the next attempt
    assert at(1, NOW + timedelta(hours=1)) is not None


def test_keys_are_deterministic() -> None:
    assert storage_key("job_01ARZ3NDEKTSV4RRFFQ69G5FAV", 2) == "job_01ARZ3NDEKTSV4RRFFQ69G5FAV/2"


def test_if_none_match_compares_weakly() -> None:
    etag = '"ab12"'
    assert etag_matches('"ab12"', etag)
    assert etag_matches('"x", W/"ab12"', etag)
    assert etag_matches("*", etag)
    assert not etag_matches('"ab1"', etag)
    assert not etag_matches("", etag)


def test_image_size_comes_from_the_header_alone() -> None:
    assert image_size(solid_png(640, 384)[:64]) == (640, 384)
    assert image_size(solid_jpeg(1024, 768)[:400]) == (1024, 768)
    assert image_size(b"not an image") is None


def fetcher_answering(response: httpx.Response, *, max_bytes: int = 1000) -> OutputFetcher:
    return OutputFetcher(
        max_bytes=max_bytes,
        allow_private=True,
        transport=httpx.MockTransport(lambda _request: response),
    )


async def drain(fetcher: OutputFetcher, url: str = "https://cdn.test/a.png") -> tuple[str, int]:
    async with fetcher.open(url) as download:
        async for _chunk in download.chunks():
            pass
    return download.sha256, download.size


class Body(httpx.AsyncByteStream):
    """A streamed body with no Content-Length, that counts what was read of it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk


async def test_a_download_is_hashed_and_counted_while_it_streams() -> None:
    body = Body([b"a" * 300, b"b" * 300])
    fetcher = fetcher_answering(httpx.Response(200, stream=body))
    assert await drain(fetcher) == (hashlib.sha256(b"a" * 300 + b"b" * 300).hexdigest(), 600)


async def test_a_body_past_the_limit_is_cut_off_without_being_read_whole() -> None:
    body = Body([b"x" * 600, b"x" * 600, b"x" * 600])
    fetcher = fetcher_answering(httpx.Response(200, stream=body), max_bytes=1000)
    with pytest.raises(FetchFailed) as failed:
        await drain(fetcher)
    assert (failed.value.code, failed.value.retryable) == ("output_too_large", False)
    assert body.sent == 2  # stopped at the chunk that crossed the limit


async def test_an_announced_size_past_the_limit_is_refused_before_reading() -> None:
    body = Body([b"x"])
    response = httpx.Response(200, stream=body, headers={"Content-Length": "5000"})
    with pytest.raises(FetchFailed) as failed:
        await drain(fetcher_answering(response))
    assert failed.value.code == "output_too_large" and body.sent == 0


async def test_an_error_status_is_a_retryable_failure_whose_reason_hides_the_query() -> None:
    fetcher = fetcher_answering(httpx.Response(500))
    with pytest.raises(FetchFailed) as failed:
        await drain(fetcher, "https://cdn.test/a.png?Signature=secret")
    assert (failed.value.code, failed.value.retryable) == ("download_failed", True)
    assert "secret" not in failed.value.reason and "HTTP 500" in failed.value.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254"])
async def test_non_public_addresses_are_refused_before_connecting(host: str) -> None:
    fetcher = OutputFetcher(max_bytes=1000, allow_private=False)
    try:
        with pytest.raises(FetchFailed) as failed:
            await drain(fetcher, f"http://{host}:9/a.png?Signature=secret")
    finally:
        await fetcher.aclose()
    assert (failed.value.code, failed.value.retryable) == ("private_address", False)
    assert "secret" not in failed.value.reason


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_the_folder_store_keeps_whole_objects_only(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/out", s3=S3Credentials())
    assert storage is not None
    await storage.put("job_1/0", chunks_of(b"abc", b"def"))
    size, stream = await storage.open("job_1/0")
    assert size == 6 and b"".join([c async for c in stream]) == b"abcdef"

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise FetchFailed("output_too_large", "too large", retryable=False)

    with pytest.raises(FetchFailed):
        await storage.put("job_1/1", broken())
    with pytest.raises(StoredObjectMissing):
        await storage.open("job_1/1")
    assert open_storage("none", s3=S3Credentials()) is None
