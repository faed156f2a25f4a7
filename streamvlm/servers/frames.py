"""Turning a frame message's image bytes into an RGB array, within the server's limits."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .protocol import ProtocolError
from .settings import ServerSettings

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


def decode_image(data: bytes, settings: ServerSettings) -> np.ndarray:
    """Decode a JPEG, PNG or WebP image into an ``(H, W, 3)`` uint8 RGB array.

    Size is checked on the raw bytes, dimensions on the image header before any pixel
    is decoded, so neither a large file nor a small file that expands into a huge
    bitmap costs the server more than the limits allow. Raises ``ProtocolError`` with
    code ``frame_too_large``, ``frame_dimensions`` or ``bad_image``.
    """
    if len(data) > settings.max_frame_bytes:
        raise ProtocolError(
            "frame_too_large", f"frame is {len(data)} bytes, over the limit of {settings.max_frame_bytes}"
        )
    try:
        # formats= stops PIL from trying every format it knows (EPS, PSD, ...) on client bytes
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ProtocolError("frame_dimensions", f"frame is too large to decode: {e}") from None
    except Exception:  # UnidentifiedImageError mostly; PIL's parsers raise many types on bad bytes
        raise ProtocolError("bad_image", "frame is not a JPEG, PNG or WebP image") from None
    width, height = image.size
    if (
        width > settings.max_frame_side
        or height > settings.max_frame_side
        or width * height > settings.max_frame_pixels
    ):
        raise ProtocolError(
            "frame_dimensions",
            f"frame is {width}x{height} pixels; the limit is {settings.max_frame_side} per side and "
            f"{settings.max_frame_pixels} in all",
        )
    if width < 2 or height < 2:
        raise ProtocolError("frame_dimensions", f"frame is {width}x{height} pixels, too small to encode")
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception:  # truncated or corrupt data: OSError, EOFError, SyntaxError, ...
        raise ProtocolError("bad_image", f"{image.format} frame is corrupt or truncated") from None
    return np.ascontiguousarray(rgb)
