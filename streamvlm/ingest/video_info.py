"""What a source knows about its video before decoding it all."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sampler import _EPS as SAMPLER_TOLERANCE_S  # the sampler's own rule, so the count matches it


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts, as the frames will come out of the source.

    ``width``/``height`` are after rotation. ``rotation`` is the container's display
    rotation, normalised to 0/90/180/270 degrees counter-clockwise (PyAV reports a
    90-degree clockwise tag as -90, stored here as 270). ``fps`` is the nominal rate the
    container declares (real times come from PTS; a variable-frame-rate file's nominal
    rate is only a hint); ``duration`` and ``frame_count`` are ``None`` when the container
    does not say. ``backend`` is the decoder that will produce the frames.
    """

    width: int
    height: int
    rotation: int
    fps: float | None
    duration: float | None
    frame_count: int | None
    codec: str
    backend: str

    def frames_at(self, fps: float) -> int | None:
        """Frames a ``Sampler(fps)`` keeps from this video, by its container's metadata.

        Known before decoding anything, so a server can refuse a video with too many
        frames at once. Exact for a constant-frame-rate file whose metadata is right: the
        sampler keeps one frame per tick ``k / fps`` up to the last frame's time, and never
        more than the file has. ``None`` when the container gives no duration (then only
        decoding can tell).
        """
        if self.duration is None or self.duration <= 0 or fps <= 0:
            return None
        frame_time = 1.0 / self.fps if self.fps else 0.0
        frames = self.frame_count or (round(self.duration * self.fps) if self.fps else None)
        last_t = max(0.0, self.duration - frame_time)  # the last frame starts one frame before the end
        ticks = math.floor((last_t + SAMPLER_TOLERANCE_S) * fps) + 1
        return min(ticks, frames) if frames else ticks
