"""``World``: a deterministic synthetic video stream and the events that happen in it."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import ConfigError
from .background import PALETTES, Scene, make_scenes, texture_tile
from .events import Event, EventStyle, Scheduler, exact_events, poisson_events
from .glyphs import digit_mask, digit_offset, digit_scale, shape_mask
from .vocab import COLOUR_RGB, COLOURS, DIGIT_INK, SHAPES

# Generator streams derived from the seed: events and scenes draw from separate streams,
# so changing the event density does not change the backgrounds, and vice versa.
_EVENTS_STREAM, _SCENES_STREAM = 0, 1


class World:
    """A synthetic video: drifting textured backgrounds with scene cuts, and coloured
    shapes (some showing a digit) that appear, stay a few seconds, maybe move, and leave.

    Everything is a pure function of the arguments: the same seed gives the same events
    and bit-identical frames. Frame ``i`` is the sample at stream time ``i / fps``; the
    stream has ``n_frames = round(seconds * fps)`` frames.

    Args:
        seed: the seed of everything random.
        seconds: stream length.
        fps: sampled frames per second of stream time.
        size: frame side in px (square frames; even, >= 48).
        events_per_minute: rate of random events (ignored when ``n_events`` or ``events``
            is given). Starts form a Poisson process; events that would break the
            on-screen rules are delayed or dropped, so the realised rate is a bit lower.
        n_events: exactly this many random events instead (for short clips).
        max_on_screen: at most this many objects on any frame (1 or 2).
        durations: (min, max) seconds an object stays.
        digit_prob: chance an object shows a digit.
        move_prob: chance an object moves (slowly, in a straight line).
        scene_seconds: mean time between scene cuts (0 or ``None``: no cuts).
        shapes, colours: the vocabularies random events draw from.
        object_size: object box side in px (default: size / 2, 56 px at 112: a tiny ViT with
            28-px merged tokens needs an object to span a few of them; at 36 px it
            could not learn colours, see docs/training.md).
        events: an explicit event list (e.g. a needle stream's) instead of random events;
            they are renumbered by start frame.

    Raises:
        ConfigError: an option that cannot work.
    """

    def __init__(
        self,
        seed: int,
        seconds: float,
        fps: float = 1.0,
        size: int = 112,
        *,
        events_per_minute: float = 4.0,
        n_events: int | None = None,
        max_on_screen: int = 1,
        durations: tuple[float, float] = (2.0, 6.0),
        digit_prob: float = 0.5,
        move_prob: float = 0.5,
        scene_seconds: float | None = 60.0,
        shapes: Sequence[str] = SHAPES,
        colours: Sequence[str] = COLOURS,
        object_size: int | None = None,
        events: Sequence[Event] | None = None,
    ):
        _check_options(
            seconds, fps, size, events_per_minute, n_events, max_on_screen, durations, shapes, colours
        )
        self.seed = int(seed)
        self.seconds = float(seconds)
        self.fps = float(fps)
        self.size = int(size)
        self.n_frames = max(1, round(self.seconds * self.fps))
        self.object_size = int(object_size) if object_size else self.size // 2
        if not 8 <= self.object_size <= self.size // 2:
            raise ConfigError(
                f"object_size must be between 8 and size/2 = {self.size // 2}, got {object_size}"
            )
        self.max_on_screen = int(max_on_screen)
        # Kept to rebuild the world from its sidecar (``to_dict``/``from_dict``).
        self.params = {
            "events_per_minute": float(events_per_minute),
            "n_events": n_events,
            "max_on_screen": self.max_on_screen,
            "durations": [float(durations[0]), float(durations[1])],
            "digit_prob": float(digit_prob),
            "move_prob": float(move_prob),
            "scene_seconds": scene_seconds,
            "shapes": list(shapes),
            "colours": list(colours),
            "object_size": self.object_size,
        }
        explicit = events is not None
        if not explicit:
            style = EventStyle(
                durations=(float(durations[0]), float(durations[1])),
                digit_prob=digit_prob,
                move_prob=move_prob,
                shapes=tuple(shapes),
                colours=tuple(colours),
            )
            rng = np.random.default_rng([self.seed, _EVENTS_STREAM])
            sched = Scheduler(rng, self.n_frames, self.fps, self.size, self.object_size, self.max_on_screen)
            try:
                if n_events is not None:
                    exact_events(sched, style, n_events)
                else:
                    poisson_events(sched, style, events_per_minute)
            except ValueError as e:
                raise ConfigError(f"{e}; use fewer events, shorter durations or a longer stream") from None
            events = sched.events
        else:
            self._check_events(events)
        ordered = sorted(events, key=lambda e: (e.frame_start, e.frame_end, e.positions[0]))
        self.events: list[Event] = [replace(e, id=k) for k, e in enumerate(ordered)]

        scene_rng = np.random.default_rng([self.seed, _SCENES_STREAM])
        self.scenes: list[Scene] = make_scenes(scene_rng, self.n_frames, self.fps, self.size, scene_seconds)
        self._scene_starts = [s.frame_start for s in self.scenes]
        self._tiles: dict[int, np.ndarray] = {}  # scene index -> texture tile, made on first use
        self._on_frame: dict[int, list[Event]] = {}
        for e in self.events:
            for f in range(e.frame_start, e.frame_end):
                self._on_frame.setdefault(f, []).append(e)
        if explicit:
            self._check_layout()
        self._colours = {c: np.asarray(rgb, np.uint8) for c, rgb in COLOUR_RGB.items()}
        self._ink = np.asarray(DIGIT_INK, np.uint8)
        self._digit_scale = digit_scale(self.object_size)

    # ------------------------------------------------------------------ time

    @property
    def end_time(self) -> float:
        """Stream time of the last frame (a question "at the end" is asked at this time)."""
        return (self.n_frames - 1) / self.fps

    def frame_time(self, i: int) -> float:
        """Stream time of frame ``i``."""
        return i / self.fps

    def frame_at(self, t: float) -> int:
        """The last frame at or before stream time ``t`` (clamped to the stream)."""
        return int(min(self.n_frames - 1, max(0, math.floor(t * self.fps + 1e-6))))

    @property
    def scene_cuts(self) -> list[int]:
        """Frames where a new scene starts (not counting frame 0)."""
        return self._scene_starts[1:]

    def scene_of(self, i: int) -> int:
        """Index in ``scenes`` of the scene frame ``i`` belongs to."""
        return bisect.bisect_right(self._scene_starts, i) - 1

    def on_screen(self, i: int) -> list[Event]:
        """Events visible on frame ``i``."""
        return list(self._on_frame.get(i, ()))

    # ------------------------------------------------------------------ pixels

    def render(self, i: int) -> np.ndarray:
        """Frame ``i`` as RGB uint8 ``(size, size, 3)``."""
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} is outside the stream (0..{self.n_frames - 1})")
        k = self.scene_of(i)
        scene = self.scenes[k]
        tile = self._tiles.get(k)
        if tile is None:
            tile = self._tiles[k] = texture_tile(scene.texture_seed, scene.palette, self.size)
        dt = (i - scene.frame_start) / self.fps
        ox = round(scene.offset[0] + scene.velocity[0] * dt) % self.size
        oy = round(scene.offset[1] + scene.velocity[1] * dt) % self.size
        img = tile[oy : oy + self.size, ox : ox + self.size].copy()
        for e in self._on_frame.get(i, ()):
            x, y = e.position(i)
            box = img[y : y + e.size, x : x + e.size]
            box[shape_mask(e.shape, e.size)] = self._colours[e.colour]
            if e.digit is not None:
                dx, dy = digit_offset(e.shape, e.size, self._digit_scale)
                mask = digit_mask(e.digit, self._digit_scale)
                box[dy : dy + mask.shape[0], dx : dx + mask.shape[1]][mask] = self._ink
        return img

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start .. stop-1`` stacked: uint8 ``(T, size, size, 3)``."""
        stop = self.n_frames if stop is None else stop
        return np.stack([self.render(i) for i in range(start, stop)])

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        """JSON-serialisable description: arguments, scenes and events."""
        return {
            "seed": self.seed,
            "seconds": self.seconds,
            "fps": self.fps,
            "size": self.size,
            "n_frames": self.n_frames,
            "params": dict(self.params),
            "scenes": [s.to_dict() for s in self.scenes],
            "events": [e.to_dict() for e in self.events],
        }

    @classmethod
    def from_dict(cls, d: dict) -> World:
        """Rebuild a world from ``to_dict()`` (its events are taken as given)."""
        p = dict(d["params"])
        p["durations"] = tuple(p["durations"])
        return cls(
            d["seed"],
            d["seconds"],
            d["fps"],
            d["size"],
            **p,
            events=[Event.from_dict(e) for e in d["events"]],
        )

    def __repr__(self) -> str:
        return (
            f"World(seed={self.seed}, seconds={self.seconds:g}, fps={self.fps:g}, size={self.size}, "
            f"events={len(self.events)}, scenes={len(self.scenes)})"
        )

    def _check_events(self, events: Sequence[Event]) -> None:
        for e in events:
            if e.shape not in SHAPES or e.colour not in COLOURS:
                raise ConfigError(f"event {e.id}: unknown shape or colour {e.shape!r}/{e.colour!r}")
            if e.digit is not None and not 0 <= e.digit <= 9:
                raise ConfigError(f"event {e.id}: digit must be 0-9 or None, got {e.digit}")
            if not 0 <= e.frame_start < e.frame_end <= self.n_frames:
                raise ConfigError(f"event {e.id}: frames {e.frame_start}..{e.frame_end} outside the stream")
            if len(e.positions) != e.frame_end - e.frame_start:
                raise ConfigError(f"event {e.id}: needs one position per visible frame")
            x0, y0, x1, y1 = e.path_box()
            if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
                raise ConfigError(f"event {e.id}: leaves the {self.size}px frame")
            if e.size != self.object_size or e.fps != self.fps:
                raise ConfigError(f"event {e.id}: size/fps differ from the world's")

    def _check_layout(self) -> None:
        # What a frame shows must be exactly what the event list says: no more objects
        # than allowed, and no object hiding part of another.
        for f, on in self._on_frame.items():
            if len(on) > self.max_on_screen:
                raise ConfigError(f"frame {f} shows {len(on)} objects; max_on_screen is {self.max_on_screen}")
            for a, b in itertools.combinations(on, 2):
                (ax, ay), (bx, by) = a.position(f), b.position(f)
                if ax < bx + b.size and bx < ax + a.size and ay < by + b.size and by < ay + a.size:
                    raise ConfigError(f"events {a.id} and {b.id} overlap on frame {f}")


def _check_options(
    seconds, fps, size, events_per_minute, n_events, max_on_screen, durations, shapes, colours
):
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"seconds must be > 0, got {seconds!r}")
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps must be > 0, got {fps!r}")
    if not isinstance(size, int) or size < 48 or size % 2:
        raise ConfigError(
            f"size must be an even number of pixels >= 48 (H.264 needs even sizes), got {size!r}"
        )
    if not events_per_minute >= 0:
        raise ConfigError(f"events_per_minute must be >= 0, got {events_per_minute!r}")
    if n_events is not None and n_events < 0:
        raise ConfigError(f"n_events must be >= 0, got {n_events!r}")
    if max_on_screen not in (1, 2):
        raise ConfigError(f"max_on_screen must be 1 or 2, got {max_on_screen!r}")
    if not 0 < durations[0] <= durations[1]:
        raise ConfigError(f"durations must be (min, max) seconds with 0 < min <= max, got {durations!r}")
    if not shapes or any(s not in SHAPES for s in shapes):
        raise ConfigError(f"shapes must be a non-empty subset of {SHAPES}, got {shapes!r}")
    if not colours or any(c not in COLOURS for c in colours):
        raise ConfigError(f"colours must be a non-empty subset of {COLOURS}, got {colours!r}")
    assert len(PALETTES) >= 2  # cuts need a palette to change to
