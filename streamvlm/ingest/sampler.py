"""Pick frames by presentation time for a target frame rate, one frame at a time.

The rule (streaming: each decision uses only the frames seen so far, no look-ahead):
ticks are at ``k / fps`` seconds for k = 0, 1, 2, ...; a frame is kept when it is the
first frame at or after the next tick not yet served. Then every tick it reached is
served, so a gap in the video (variable frame rate, dropped frames) yields one frame,
not a burst of duplicates, and sampling resumes at the first tick after that frame.

Consequences worth knowing: the first frame is always kept (tick 0, times start at 0);
kept frames are never closer than ``1 / fps`` apart in tick terms, and at most one frame
is kept per tick interval; with input slower than ``fps`` every frame is kept.
Times are compared with a tolerance of 1 ms: Matroska/WebM store PTS in milliseconds,
so at 3 fps the frame at 0.333 s must count as the 1/3 s tick (and float jitter such
as 0.9999999 as the 1 s tick). It cannot merge distinct frames of any real camera rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from ..errors import ConfigError
from .frames import Frame

_EPS = 1e-3  # seconds; see the module docstring


class Sampler:
    """Decides frame by frame whether to keep a frame for a target ``fps``.

    ``fps=None`` or ``0`` keeps every frame. Use ``keep(t)`` on a stream of times, or
    ``sample(frames)`` on an iterable of ``Frame``s. ``reset()`` starts a new stream.
    """

    def __init__(self, fps: float | None = 1.0):
        if fps is not None and (
            isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps < 0
        ):
            raise ConfigError(
                f"sampling fps must be a finite number >= 0 (0 or None keeps every frame), got {fps!r}"
            )
        self.fps = float(fps) if fps else None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame is treated as the first."""
        self._next_tick = 0  # index k of the next tick k / fps not yet served

    def keep(self, t: float) -> bool:
        """Whether the frame at time ``t`` (seconds, non-decreasing) is kept."""
        if self.fps is None:
            return True
        if t + _EPS < self._next_tick / self.fps:
            return False
        # Serve every tick up to and including t, so a gap does not cause a burst.
        self._next_tick = math.floor((t + _EPS) * self.fps) + 1
        return True

    def sample(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """The kept frames of ``frames``, lazily (pass a ``FileSource`` straight in)."""
        for frame in frames:
            if self.keep(frame.t):
                yield frame


def sample_frames(frames: Iterable[Frame], fps: float | None = 1.0) -> Iterator[Frame]:
    """Shorthand for ``Sampler(fps).sample(frames)``."""
    return Sampler(fps).sample(frames)
