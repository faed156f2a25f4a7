"""Turn raw decoder timestamps into a monotonic presentation clock.

Decoders hand frames over in presentation order when a file is muxed correctly, but
real files are not always: broken muxers write PTS slightly out of order, some packets
carry no PTS at all. Everything downstream (the sampler, Qwen2.5-VL's time axis) needs
times that never go backwards, so this module fixes them in one place, with these rules:

1. **Origin.** Times are seconds relative to the PTS of the first frame emitted.
2. **Missing PTS.** A frame without a PTS is placed one frame-duration after the
   previous frame *in decode order* (its own duration when the container gives one,
   else ``1 / nominal_fps``). It is counted in ``missing``.
3. **Reorder buffer.** ``depth`` frames are held back; each new frame joins them and
   the one with the smallest PTS is released, so a frame whose PTS is up to ``depth``
   places out of order comes out sorted (``depth=0``: no reordering). Held frames cost
   memory (``depth`` decoded frames) and latency, hence a small depth.
4. **Never backwards.** A frame whose PTS is still earlier than the last emitted time
   (disorder deeper than the buffer, or a PTS before the first frame) is emitted at the
   last emitted time instead. It is counted in ``clamped``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from numbers import Real
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_REORDER_DEPTH = 4


class PresentationClock(Generic[T]):
    """Orders ``(payload, pts_seconds | None, duration_seconds | None)`` items by time.

    PTS and durations may be floats or ``Fraction``s.

    ``run(items)`` yields ``(payload, t)`` with ``t`` following the module rules. The
    counters ``missing`` and ``clamped`` are readable during and after the run.
    """

    def __init__(self, nominal_fps: float | None, depth: int = DEFAULT_REORDER_DEPTH):
        # A stream with no usable rate still needs some spacing for PTS-less frames.
        self.default_step = 1.0 / nominal_fps if nominal_fps and nominal_fps > 0 else 1.0 / 30.0
        self.depth = max(0, depth)
        self.missing = 0
        self.clamped = 0

    def run(self, items: Iterable[tuple[T, Real | None, Real | None]]) -> Iterator[tuple[T, float]]:
        heap: list[tuple[float, int, T]] = []
        order = itertools.count()  # ties keep decode order; payloads are never compared
        prev_pts: float | None = None
        prev_step = self.default_step
        origin: float | None = None
        last_t = 0.0
        for payload, pts, duration in items:
            step = duration if duration and duration > 0 else self.default_step
            if pts is None:
                self.missing += 1
                pts = 0.0 if prev_pts is None else prev_pts + prev_step
            prev_pts, prev_step = pts, step
            heapq.heappush(heap, (pts, next(order), payload))
            if len(heap) > self.depth:
                origin, last_t, out = self._emit(heapq.heappop(heap), origin, last_t)
                yield out
        while heap:
            origin, last_t, out = self._emit(heapq.heappop(heap), origin, last_t)
            yield out

    def _emit(self, item, origin, last_t):
        pts, _, payload = item
        if origin is None:
            origin = pts
        # PTS may arrive as exact Fractions (pts * time_base); subtracting before the
        # float conversion keeps e.g. 0.033 exact for streams that start late.
        t = float(pts - origin)
        if t < last_t:
            self.clamped += 1
            t = last_t
        return origin, t, (payload, t)
