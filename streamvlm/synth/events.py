"""Events (one object's visit to the screen) and the scheduler that lays them out.

Times live on the frame grid: an event is visible on frames ``frame_start`` up to (not
including) ``frame_end``, i.e. at stream times ``t_start <= t < t_end``. Objects never
overlap on screen (two concurrent objects get disjoint paths) and stay fully inside the
frame, so what a frame shows is exactly what the event list says it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Empty frames kept between an object leaving and the next one appearing where they
# would otherwise touch in time: with max_on_screen=1 every event is then a separate
# run of frames, which makes "appeared", "first" and "now" easy to segment.
GAP_FRAMES = 1
# Objects keep this many px (at 112 px) from the frame border and from each other.
MARGIN = 4


@dataclass(frozen=True)
class Event:
    """One object on screen for a while.

    Attributes:
        id: index in the world's event list (events are numbered by ``frame_start``).
        shape, colour: from ``vocab.SHAPES`` / ``vocab.COLOURS``.
        digit: 0-9 drawn on the object, or ``None``.
        frame_start, frame_end: visible on frames ``frame_start <= i < frame_end``.
        fps: the world's sampling rate, so that times follow from frames.
        size: side of the object's square box in px.
        positions: ``(x, y)`` top-left corner of the box, one per visible frame.
    """

    id: int
    shape: str
    colour: str
    digit: int | None
    frame_start: int
    frame_end: int
    fps: float
    size: int
    positions: tuple[tuple[int, int], ...]

    @property
    def t_start(self) -> float:
        """Stream time (s) of the first frame showing the object."""
        return self.frame_start / self.fps

    @property
    def t_end(self) -> float:
        """Stream time (s) of the first frame after it left (exclusive end)."""
        return self.frame_end / self.fps

    @property
    def name(self) -> str:
        """``"<colour> <shape>"``, the way answers name an object."""
        return f"{self.colour} {self.shape}"

    def visible(self, frame: int) -> bool:
        return self.frame_start <= frame < self.frame_end

    def position(self, frame: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of the box on ``frame`` (which must be a visible frame)."""
        return self.positions[frame - self.frame_start]

    def path_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` (exclusive) covering the object on every frame it is visible."""
        xs = [p[0] for p in self.positions]
        ys = [p[1] for p in self.positions]
        return min(xs), min(ys), max(xs) + self.size, max(ys) + self.size

    def to_dict(self) -> dict:
        """JSON-serialisable form (``t_start``/``t_end`` included for readers)."""
        return {
            "id": self.id,
            "shape": self.shape,
            "colour": self.colour,
            "digit": self.digit,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "frame_start": self.frame_start,
            "frame_end": self.frame_end,
            "fps": self.fps,
            "size": self.size,
            "positions": [list(p) for p in self.positions],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        return cls(
            id=int(d["id"]),
            shape=str(d["shape"]),
            colour=str(d["colour"]),
            digit=None if d["digit"] is None else int(d["digit"]),
            frame_start=int(d["frame_start"]),
            frame_end=int(d["frame_end"]),
            fps=float(d["fps"]),
            size=int(d["size"]),
            positions=tuple((int(p[0]), int(p[1])) for p in d["positions"]),
        )


@dataclass(frozen=True)
class EventStyle:
    """How random events look and move (the scheduler's knobs, all in seconds and px)."""

    durations: tuple[float, float] = (2.0, 6.0)  # on screen for this long (uniform, frame grid)
    digit_prob: float = 0.5  # chance that an object shows a digit
    move_prob: float = 0.5  # chance that it moves (else it stays put)
    speed: tuple[float, float] = (2.0, 6.0)  # px per second at 112 px, when it moves
    shapes: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()


class Scheduler:
    """Adds events one at a time to a stream, keeping the on-screen rules.

    Rules: at most ``max_on_screen`` objects on any frame (counting ``GAP_FRAMES`` after
    each one's exit), concurrent objects on disjoint paths, every object inside the frame.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        n_frames: int,
        fps: float,
        size: int,
        object_size: int,
        max_on_screen: int,
        fixed: Sequence[Event] = (),
    ):
        self.rng, self.n_frames, self.fps, self.size = rng, n_frames, fps, size
        self.object_size, self.max_on_screen = object_size, max_on_screen
        self.events: list[Event] = list(fixed)

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.fps))

    def try_add(self, start: int, duration: int, style: EventStyle, attempts: int = 30) -> Event | None:
        """Add an event on frames ``[start, start + duration)`` (cut at the stream's end) if
        the rules allow; returns it, or ``None`` (nothing added)."""
        end = min(self.n_frames, start + duration)
        if start < 0 or end <= start:
            return None
        busy = [
            e for e in self.events if e.frame_start < end + GAP_FRAMES and start < e.frame_end + GAP_FRAMES
        ]
        if not self._room_in_time(busy, start, end):
            return None
        boxes = [e.path_box() for e in busy]
        for _ in range(attempts):
            positions = self._path(end - start, style)
            if not any(_boxes_touch(_box_of(positions, self.object_size), b) for b in boxes):
                break
        else:
            return None
        rng = self.rng
        digit = int(rng.integers(10)) if rng.random() < style.digit_prob else None
        event = Event(
            id=-1,  # numbered by the world once all events are in
            shape=str(style.shapes[rng.integers(len(style.shapes))]),
            colour=str(style.colours[rng.integers(len(style.colours))]),
            digit=digit,
            frame_start=start,
            frame_end=end,
            fps=self.fps,
            size=self.object_size,
            positions=positions,
        )
        self.events.append(event)
        return event

    def _room_in_time(self, busy: list[Event], start: int, end: int) -> bool:
        # Objects on screen (plus their exit gap) on each frame of [start, end) must stay
        # below the limit; only events overlapping that span matter, and there are few.
        for f in range(start, end):
            if sum(e.frame_start <= f < e.frame_end + GAP_FRAMES for e in busy) >= self.max_on_screen:
                return False
        # And this event's own exit gap must not land on a frame that is already full.
        for f in range(end, min(self.n_frames, end + GAP_FRAMES)):
            if sum(e.frame_start <= f < e.frame_end for e in busy) >= self.max_on_screen:
                return False
        return True

    def _path(self, n: int, style: EventStyle) -> tuple[tuple[int, int], ...]:
        """Top-left corners for ``n`` frames: a straight line at constant speed, or still."""
        rng, s = self.rng, self.object_size
        margin = max(1, round(MARGIN * self.size / 112))
        lo, hi = margin, self.size - margin - s  # top-left range that keeps the box inside
        x0, y0 = rng.uniform(lo, hi, size=2)
        x1, y1 = x0, y0
        if n > 1 and rng.random() < style.move_prob:
            speed = rng.uniform(*style.speed) * self.size / 112
            angle = rng.uniform(0, 2 * np.pi)
            dist = speed * (n - 1) / self.fps
            x1 = float(np.clip(x0 + dist * np.cos(angle), lo, hi))
            y1 = float(np.clip(y0 + dist * np.sin(angle), lo, hi))
        k = np.arange(n) / max(1, n - 1)
        xs = np.rint(x0 + (x1 - x0) * k).astype(int)
        ys = np.rint(y0 + (y1 - y0) * k).astype(int)
        return tuple((int(x), int(y)) for x, y in zip(xs, ys, strict=True))


def _box_of(positions: Sequence[tuple[int, int]], size: int) -> tuple[int, int, int, int]:
    xs = [p[0] for p in positions]
    ys = [p[1] for p in positions]
    return min(xs), min(ys), max(xs) + size, max(ys) + size


def _boxes_touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    # Boxes closer than MARGIN px count as touching: keeps two objects visually separate.
    return not (
        a[2] + MARGIN <= b[0] or b[2] + MARGIN <= a[0] or a[3] + MARGIN <= b[1] or b[3] + MARGIN <= a[1]
    )


def poisson_events(sched: Scheduler, style: EventStyle, per_minute: float) -> None:
    """Fill the stream with events whose start times form a Poisson process of rate
    ``per_minute``; one that would break a rule is delayed to the next frame where it
    fits (up to its own duration later), else dropped. Starts spread over the whole
    stream, so needles and distractors can be anywhere."""
    if per_minute <= 0:
        return
    rng = sched.rng
    dmin, dmax = sched.frames(style.durations[0]), sched.frames(style.durations[1])
    t = rng.exponential(60.0 / per_minute)
    while True:
        start = int(np.floor(t * sched.fps))
        if start >= sched.n_frames:
            return
        duration = int(rng.integers(dmin, dmax + 1))
        for delay in range(duration + 1):
            if sched.try_add(start + delay, duration, style, attempts=10):
                break
        t += rng.exponential(60.0 / per_minute)


def exact_events(sched: Scheduler, style: EventStyle, n: int, tries: int = 200) -> None:
    """Add exactly ``n`` events at random times (for short training clips).

    Start frames are drawn uniformly such that each event gets at least the minimum
    duration before the stream ends (the last one may still be on screen at the end);
    a draw that breaks a rule is redrawn. If ``tries`` draws fail, the events are laid
    one after another with the shortest durations that fit.
    """
    rng = sched.rng
    dmin, dmax = sched.frames(style.durations[0]), sched.frames(style.durations[1])
    if n <= 0:
        return
    fixed = list(sched.events)
    for _ in range(tries):
        sched.events = list(fixed)
        starts = np.sort(rng.integers(0, max(1, sched.n_frames - dmin + 1), size=n))
        if all(sched.try_add(int(s), int(rng.integers(dmin, dmax + 1)), style, attempts=10) for s in starts):
            return
    sched.events = list(fixed)
    need = n * dmin + (n - 1) * GAP_FRAMES
    if need > sched.n_frames:
        raise ValueError(f"{n} events of {dmin} frames do not fit in {sched.n_frames} frames")
    start = int(rng.integers(0, sched.n_frames - need + 1))
    for _ in range(n):
        if sched.try_add(start, dmin, style, attempts=100) is None:
            raise ValueError(f"could not place {n} events in {sched.n_frames} frames")
        start += dmin + GAP_FRAMES
