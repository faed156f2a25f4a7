"""Frames as the server takes them: encoded images (JPEG by default)."""

from __future__ import annotations

import io
from typing import Any

# Content sniffing as the server does it: anything else would only come back as bad_image.
_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def encode_frame(frame: Any, quality: int = 85) -> bytes:
    """``frame`` as image bytes to send: encoded bytes pass through, an RGB array or a
    PIL image is encoded as JPEG.

    An ``(H, W, 3)`` uint8 array is RGB (OpenCV's BGR must be converted first).
    """
    if isinstance(frame, (bytes, bytearray, memoryview)):
        data = bytes(frame)
        if not (data.startswith(_MAGICS) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
            raise ValueError("encoded frames must be JPEG, PNG or WebP bytes")
        return data
    from PIL import Image

    if not isinstance(frame, Image.Image):
        import numpy as np

        rgb = np.asarray(frame)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"an RGB frame must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        frame = Image.fromarray(np.ascontiguousarray(rgb))
    out = io.BytesIO()
    frame.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()
