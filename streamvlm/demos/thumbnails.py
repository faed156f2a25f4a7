"""A bounded ring of small JPEG thumbnails of the frames a session saw, keyed by stream time.

Answers name the blocks they attended by time span (``BlockRef.t_start`` / ``t_end``),
not by pixels: the session keeps KV, never frames. The demo keeps its own small
picture of the recent past so it can show which frames an answer looked at. Frames
older than the ring are reported by time only.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Thumbnail:
    """One remembered frame: its stream time and a small JPEG of it."""

    t: float
    jpeg: bytes

    def image(self) -> Image.Image:
        """The thumbnail decoded to a PIL image."""
        return Image.open(io.BytesIO(self.jpeg)).convert("RGB")


class ThumbnailRing:
    """The last ``capacity`` frames as JPEGs at most ``side`` pixels on their longer side.

    Stored as JPEG (a few KB each) rather than arrays so that hundreds of frames per
    browser session cost megabytes, not hundreds of megabytes. Thread-safe: frames are
    added from the webcam/video handlers while answers read them.
    """

    def __init__(self, capacity: int = 512, side: int = 160, quality: int = 75):
        if capacity < 1 or side < 8:
            raise ValueError(f"capacity must be >= 1 and side >= 8, got {capacity} and {side}")
        self.capacity = capacity
        self.side = side
        self.quality = quality
        self._items: deque[Thumbnail] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, t: float, rgb: np.ndarray) -> None:
        """Remember frame ``rgb`` (H, W, 3 uint8) seen at stream time ``t`` (non-decreasing)."""
        image = Image.fromarray(rgb)
        image.thumbnail((self.side, self.side))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=self.quality)
        with self._lock:
            self._items.append(Thumbnail(float(t), out.getvalue()))

    def between(self, t_start: float, t_end: float, eps: float = 1e-6) -> list[Thumbnail]:
        """The remembered frames with ``t_start <= t <= t_end``, oldest first."""
        with self._lock:
            items = list(self._items)
        times = [item.t for item in items]
        lo = bisect.bisect_left(times, t_start - eps)
        hi = bisect.bisect_right(times, t_end + eps)
        return items[lo:hi]

    @property
    def oldest(self) -> float | None:
        """Stream time of the oldest remembered frame (``None`` when empty)."""
        with self._lock:
            return self._items[0].t if self._items else None
