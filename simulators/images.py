"""Tiny but valid JPEG and PNG files of any size, served as the simulators' outputs.

Outputs are served by the simulator itself at `/_sim/files/{stem}-{w}x{h}.{png|jpg}`: the
name carries the size and format, so any URL handed out stays valid without storing anything.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

from aiohttp import web

from simulators.wire import CONTROL_PREFIX, json_response

ImageFormat = Literal["jpeg", "png"]

FILES_PATH = f"{CONTROL_PREFIX}/files"
_FILE_NAME = re.compile(r"^(?P<stem>[\w.-]+?)(?:-(?P<w>\d+)x(?P<h>\d+))?\.(?P<ext>jpe?g|png)$")

# Outputs are solid-colour, so even large images stay a few kilobytes; the cap only bounds
# the work one request can cause.
MAX_SIDE = 8192


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


@lru_cache(maxsize=64)
def solid_jpeg(width: int, height: int) -> bytes:
    """Return a baseline greyscale JPEG of mid-grey pixels, so URLs advertise real sizes."""
    _check_size(width, height)
    out = bytearray(b"\xff\xd8")
    out += _jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += _jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    # One Huffman code ("0", length 1) per table: DC difference category 0 and AC end-of-block.
    single_code = bytes([1]) + bytes(15)
    out += _jpeg_segment(0xC4, b"\x00" + single_code + b"\x00")
    out += _jpeg_segment(0xC4, b"\x10" + single_code + b"\x00")
    out += _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    # Pixel value 128 level-shifts to 0, so every 8x8 block is "DC diff 0, EOB": two zero bits.
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    full, rest = divmod(2 * blocks, 8)
    out += bytes(full)
    if rest:
        out.append(0xFF >> rest)  # pad the last byte with 1 bits, as the standard asks
    out += b"\xff\xd9"
    return bytes(out)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@lru_cache(maxsize=64)
def solid_png(width: int, height: int) -> bytes:
    """Return a one-colour palette PNG; 1 bit per pixel keeps even 8k images cheap."""
    _check_size(width, height)
    header = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    row = b"\x00" + bytes((width + 7) // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", bytes([0x5A, 0x8F, 0xC8]))
        + _png_chunk(b"IDAT", zlib.compress(row * height, 6))
        + _png_chunk(b"IEND", b"")
    )


def render_image(fmt: ImageFormat, width: int, height: int) -> bytes:
    """Return the bytes of a solid image in the requested format."""
    return solid_jpeg(width, height) if fmt == "jpeg" else solid_png(width, height)


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image size {width}x{height} outside 1..{MAX_SIDE}")


def file_url(base_url: str, stem: str, *, width: int, height: int, fmt: ImageFormat) -> str:
    """URL of an output image served by the simulator itself."""
    ext = "png" if fmt == "png" else "jpg"
    return f"{base_url}{FILES_PATH}/{stem}-{width}x{height}.{ext}"


def clamp_side(value: Any, default: int) -> int:
    """Read a requested image side leniently (numbers only), kept within what we can render."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return max(1, min(MAX_SIDE, int(value)))


def signed_url_expired(query: Mapping[str, str], now: float) -> bool:
    """A signed temporary URL (Scenario's assets: `?Expires=<epoch>&Signature=...`) stops
    working at its `Expires`, as the CDN behind such URLs does."""
    expires = query.get("Expires")
    return expires is not None and (not expires.isdigit() or int(expires) <= now)


def file_response(name: str) -> web.Response:
    """Answer `GET /_sim/files/{name}`: the image the name describes (64x64 without a size)."""
    match = _FILE_NAME.match(name)
    if match is None:
        return json_response({"error": "file not found"}, status=404)
    width = int(match["w"] or 64)
    height = int(match["h"] or 64)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return json_response({"error": "file not found"}, status=404)
    fmt: ImageFormat = "png" if match["ext"] == "png" else "jpeg"
    return web.Response(
        body=render_image(fmt, width, height),
        content_type=f"image/{fmt}",
        headers={"Cache-Control": "max-age=86400"},
    )
