"""The two kinds of output store the archive tests run against: a folder (obstore's LocalStore)
and a real S3 API (moto in server mode, one bucket per test), as service settings."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from moto.server import ThreadedMotoServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class OutputStore:
    """Settings that archive into one store."""

    kind: str
    settings: dict[str, Any]


class MotoS3:
    """moto's S3 API on a local port, for the whole session."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    async def new_bucket(self) -> str:
        name = f"outputs-{secrets.token_hex(4)}"
        async with httpx.AsyncClient() as client:
            # moto creates a bucket on an unsigned PUT, as S3 does on a signed one.
            response = await client.put(f"{self.endpoint}/{name}")
        assert response.status_code == 200, response.text
        return name

    async def store(self) -> OutputStore:
        bucket = await self.new_bucket()
        return OutputStore(
            "s3",
            {
                "output_store_url": f"s3://{bucket}/archive",
                "aws_access_key_id": "test-key-id",
                "aws_secret_access_key": "test-secret",
                "aws_region": "us-east-1",
                "aws_endpoint_url": self.endpoint,
            },
        )


def folder_store(root: Path) -> OutputStore:
    return OutputStore("file", {"output_store_url": f"file://{root}"})


def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()
