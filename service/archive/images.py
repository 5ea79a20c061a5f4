"""An image's size from its first bytes (Pillow reads the header only, never the pixels): how
outputs whose provider gave no width or height (Scenario's often) get them."""

from __future__ import annotations

import io
import warnings

from PIL import Image


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of an image file; None when the bytes are not an image
    Pillow knows, or the header lies beyond them."""
    try:
        with warnings.catch_warnings():
            # A huge declared size is only a number here (nothing is decoded): no bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(head)) as image:
                width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (int(width), int(height)) if width > 0 and height > 0 else None
