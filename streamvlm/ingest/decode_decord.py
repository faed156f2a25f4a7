"""decord decoding: an optional backend, never the default.

Why not the default (numbers in docs/BENCHMARKS.md, "Decoders"):

- It aborts the whole process (``std::bad_alloc`` → ``terminate``) on some damaged
  files that PyAV decodes without a single error, so no cheap PyAV probe can screen
  them out, and a crash is not acceptable in a server.
- At open it demuxes the entire file to build its frame index (time and memory grow
  with the file length, and a live/growing file cannot be opened), though frames
  themselves are decoded one by one as we call ``next()``.
- Its timestamps are float32 and, for some Matroska files, missing (it reports
  ~9.2e15); those frames get estimated times (see ``timestamps.py``).

It applies the rotation tag itself, so frames come out already rotated (the same
pixels as PyAV + ``rotate_rgb``), except that for some small rotated sizes decord 0.6
returns malformed 4-channel frames; those are dropped and counted as decode errors. After
a frame fails to decode, decord can only resume at the next keyframe, so it loses more
frames than PyAV on damaged files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import VideoOpenError
from .decode_pyav import VIDEO_HINT
from .video_info import VideoInfo

# decord reports "no timestamp" as a huge value (INT64_MAX in its internal units).
_MAX_SANE_SECONDS = 1e9


def _seconds(stamp: np.float32) -> float | None:
    # decord stores times as float32; the shortest decimal that round-trips the float32
    # gives back the container's value (10.3, not 10.300000190734863).
    t = float(str(np.float32(stamp)))
    return t if math.isfinite(t) and 0 <= t < _MAX_SANE_SECONDS else None


def decord_available() -> bool:
    """Whether the optional ``decord`` package can be imported."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


class DecordDecoder:
    """Decodes one file in presentation order as ``(rgb, pts_seconds, None)`` tuples.

    ``decode_errors`` counts frames decord failed on; decoding resumes at the next frame.
    """

    def __init__(self, path: Path, num_threads: int = 0):
        self.path = path
        self.num_threads = num_threads  # 0 = decord picks
        self.decode_errors = 0

    def open(self):
        """A ``decord.VideoReader`` for the file, or a one-line ``VideoOpenError``."""
        import decord

        try:
            return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads)
        except (RuntimeError, decord.DECORDError) as e:
            raise VideoOpenError(f"cannot open '{self.path}': decord could not read it; {VIDEO_HINT}") from e

    def frames(self, shape: tuple[int, int] | None = None) -> Iterator[tuple[np.ndarray, float | None, None]]:
        """Decode sequentially; ``shape`` = expected ``(H, W)`` after rotation, if known."""
        import decord

        reader = self.open()
        n = len(reader)
        stamps = reader.get_frame_timestamp(list(range(n)))[:, 0] if n else []
        keyframes = reader.get_key_indices() if n else []
        i = 0
        while i < n:
            try:
                rgb = reader.next().asnumpy()
            except StopIteration:
                return
            except decord.DECORDError:
                # decord cannot step over a bad frame (seek_accurate decodes through
                # it and fails again), so resume at the next keyframe.
                self.decode_errors += 1
                i = next((k for k in keyframes if k > i), n)
                if i < n:
                    try:
                        reader.seek_accurate(i)
                    except decord.DECORDError:
                        self.decode_errors += 1
                        return
                continue
            if rgb.ndim != 3 or rgb.shape[2] != 3 or (shape and rgb.shape[:2] != shape):
                # decord 0.6 returns garbage 4-channel frames for some rotated sizes
                # (e.g. a 64x48 frame tagged 90 degrees); never pass those on.
                self.decode_errors += 1
            else:
                yield rgb, _seconds(stamps[i]), None
            i += 1

    def info(self) -> VideoInfo:
        """Stream facts as decord sees them (used when PyAV cannot open the file)."""
        reader = self.open()
        if len(reader) == 0:
            raise VideoOpenError(f"cannot open '{self.path}': decord found no frames; {VIDEO_HINT}")
        h, w = reader[0].shape[:2]
        fps = reader.get_avg_fps()
        return VideoInfo(
            width=w,
            height=h,
            rotation=0,  # decord applies the tag and does not report it
            fps=fps or None,
            duration=len(reader) / fps if fps else None,
            frame_count=len(reader),
            codec="unknown",
            backend="decord",
        )
