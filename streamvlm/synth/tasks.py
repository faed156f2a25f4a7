"""Ready-made tasks: short training clips with one question, and long needle streams.

- ``make_clip_sample``: a clip of <= 32 frames with 1-3 events and one question asked
  after its last frame, for training a tiny model.
- ``make_needle_stream``: a long stream (e.g. 3600 frames) with a few *needle* events
  placed at controlled distances before the end, distractor events that can never make a
  needle question ambiguous, and questions about the needles asked at the end and at a
  few mid-stream times (each with its own distance), for needle-in-a-haystack recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .events import GAP_FRAMES, Event, EventStyle, Scheduler, poisson_events
from .questions import FAMILIES, Question, candidates, make_question, make_questions
from .vocab import COLOURS, SHAPES
from .world import World

CLIP_FRAMES = 16  # a training clip's default length
MAX_CLIP_FRAMES = 32  # the longest (24-frame clips continue training on long-stream contexts)

# Needles are about single, uniquely identified objects: the families keyed on one.
NEEDLE_FAMILIES: tuple[str, ...] = ("colour_of_shape", "shape_of_colour", "digit_of_shape")


@dataclass(frozen=True)
class ClipSample:
    """One training example: ``frames`` uint8 ``(T, size, size, 3)`` sampled at the
    world's fps, the ``question`` text, its ``answer``, and the full ``info`` (family,
    event ids, distance) and ``world`` it came from."""

    frames: np.ndarray
    question: str
    answer: str
    info: Question
    world: World = field(repr=False)


def make_clip_sample(
    seed: int,
    n_frames: int = CLIP_FRAMES,
    fps: float = 1.0,
    size: int = 112,
    n_events: int | tuple[int, int] = (1, 3),
    families: Sequence[str] = FAMILIES,
    **world_options,
) -> ClipSample:
    """A short clip and one question about it, asked after its last frame.

    ``n_events`` is a count or an inclusive ``(min, max)`` range drawn per sample; the
    family is drawn uniformly among ``families`` that have an unambiguous question (if a
    draw has none, e.g. ``families=("digit_of_shape",)`` and no digit was shown, the next
    world in the seed's sequence is tried). ``world_options`` go to ``World``.
    """
    if not 1 <= n_frames <= MAX_CLIP_FRAMES:
        raise ConfigError(f"n_frames must be 1..{MAX_CLIP_FRAMES} for a training clip, got {n_frames}")
    lo, hi = (n_events, n_events) if isinstance(n_events, int) else n_events
    rng = np.random.default_rng([int(seed), 7])
    for attempt in range(100):
        k = int(rng.integers(lo, hi + 1))
        world = World(
            int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0]),
            n_frames / fps,
            fps,
            size,
            n_events=k,
            **world_options,
        )
        questions = make_questions(world, world.end_time, rng, families, n=1)
        if questions:
            q = questions[0]
            return ClipSample(world.frames(), q.text, q.answer, q, world)
    raise ConfigError(f"no unambiguous question of {list(families)} in 100 clips; allow more families")


@dataclass(frozen=True)
class NeedleStream:
    """A long world, its needle event ids, and the questions about the needles."""

    world: World
    needles: tuple[int, ...]
    questions: list[Question]

    def to_dict(self) -> dict:
        return {
            "needles": list(self.needles),
            "questions": [q.to_dict() for q in self.questions],
        }


def make_needle_stream(
    seed: int,
    seconds: float = 3600.0,
    distances: Sequence[float] = (10.0, 100.0, 1000.0),
    fps: float = 1.0,
    size: int = 112,
    *,
    mid_questions: int = 2,
    distractors_per_minute: float = 1.0,
    needle_seconds: float = 4.0,
    families: Sequence[str] = NEEDLE_FAMILIES,
    **world_options,
) -> NeedleStream:
    """A stream with needles ending ``distances`` seconds before its last frame.

    Needles have pairwise distinct shapes and colours, each shows a digit, and
    distractors are drawn only from the shapes and colours no needle uses, so a
    question naming a needle's shape or colour always has one answer. Questions: one
    per needle (family drawn from ``families``) at the end, and the same at
    ``mid_questions`` evenly spaced mid-stream times for every needle that has left by
    then (a needle still on screen at an ask time gets no question then). Only
    questions about a single needle are asked, so ``families`` should be ones keyed on
    one object. ``world_options`` go to ``World`` (scene cuts, max_on_screen, ...);
    ``durations``, ``digit_prob`` and ``move_prob`` shape the distractors.

    Raises:
        ConfigError: too many needles, a distance that does not fit, or needles that
            would be on screen at the same time.
    """
    k = len(distances)
    if not 1 <= k <= min(len(SHAPES), len(COLOURS)):
        raise ConfigError(f"need 1..{min(len(SHAPES), len(COLOURS))} distances (one per needle), got {k}")
    rng = np.random.default_rng([int(seed), 11])
    # A world with no events and no cuts: checks the options and gives the frame grid and object size.
    probe = World(
        seed, seconds, fps, size, n_events=0, scene_seconds=None, object_size=world_options.get("object_size")
    )
    n_frames, last = probe.n_frames, probe.n_frames - 1
    duration = max(1, round(needle_seconds * fps))
    on_screen = world_options.get("max_on_screen", 1)
    sched = Scheduler(rng, n_frames, probe.fps, size, probe.object_size, max_on_screen=on_screen)
    shapes = list(rng.permutation(SHAPES))
    colours = list(rng.permutation(COLOURS))
    for i, d in sorted(enumerate(distances), key=lambda x: x[1]):
        end = last - round(d * fps)
        start = end - duration
        if start < 0 or end > n_frames:
            raise ConfigError(f"distance {d} s does not fit a {needle_seconds} s needle in {seconds} s")
        needle_style = EventStyle(digit_prob=1.0, shapes=(str(shapes[i]),), colours=(str(colours[i]),))
        if sched.try_add(start, duration, needle_style) is None:
            raise ConfigError(
                f"needle at distance {d} s overlaps another; keep distances >= {needle_seconds + GAP_FRAMES / fps} s apart"
            )
    style = EventStyle(shapes=tuple(shapes[k:]), colours=tuple(colours[k:]), **_style_options(world_options))
    if style.shapes and style.colours:
        poisson_events(sched, style, distractors_per_minute)
    needle_keys = {_key(e) for e in sched.events if e.shape in shapes[:k]}
    world = World(seed, seconds, fps, size, events=sched.events, **world_options)
    needles = tuple(e.id for e in world.events if _key(e) in needle_keys)

    ask_times = [world.frame_time(round(last * j / (mid_questions + 1))) for j in range(1, mid_questions + 1)]
    ask_times.append(world.end_time)
    questions: list[Question] = []
    for asked_at in ask_times:
        by_needle: dict[int, list] = {}
        for c in candidates(world, asked_at, families):
            ids = tuple(e.id for e in c.events)
            if len(ids) == 1 and ids[0] in needles and c.events[0].t_end <= asked_at:
                by_needle.setdefault(ids[0], []).append(c)
        for nid in sorted(by_needle):
            group = by_needle[nid]
            questions.append(make_question(group[rng.integers(len(group))], asked_at, rng))
    return NeedleStream(world, needles, questions)


def _key(e: Event) -> tuple[int, str, str]:
    return (e.frame_start, e.shape, e.colour)


def _style_options(world_options: dict) -> dict:
    # Options that shape distractors the same way they would shape random events.
    names = ("durations", "digit_prob", "move_prob")
    return {n: world_options[n] for n in names if n in world_options}
