"""The synthetic world as a training task: clips of 4-16 frames at 1 fps, one question each.

Training has three parts (docs/training.md has the runs that chose them):

0. the vision tower alone learns to see shape, colour and digit, from the mean of each
   object's tokens (``vision_sample``, ``loop.pretrain_vision``);
1. one object per clip, every question about a single object (colour, shape, digit,
   what is on screen): the LLM learns which attribute a question asks for;
2. one to three objects per clip, every question family: binding (the colour *of the
   circle*), order and counting; frame times stretched up to 2.5x, so that the time
   spans of 30-s videos and retrieved blocks are not new to the model.

``CURRICULA["long"]`` continues a trained checkpoint (``train-tiny --init``) on what
answering over a long stream looks like: up to 24 frames (a 16-frame recent window plus
four retrieved 2-frame blocks), up to five objects, and jumps in time between blocks
(retrieved blocks keep their stream times unless repositioned contiguously).

Clips are short (4-8 frames, half the cost of 4-16) in the first stage: reading the
question is learned from the number of examples, not their length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..synth import COLOURS, FAMILIES, SHAPES, VOCABULARY, World, make_clip_sample
from .batches import ObjectLabels, Sample

MIN_FRAMES, MAX_FRAMES = 4, 16
LONG_MAX_FRAMES = 24  # a 16-frame window plus four retrieved 2-frame blocks
TOKEN_PX = 28  # a merged visual token covers 28 x 28 px (14-px patches, 2 x 2 merge)
TEMPORAL_PATCH = 2  # frames per merged token
# Classes per attribute of the auxiliary object labels (shape, colour, digit; digit 0 = none).
OBJECT_CLASSES = (len(SHAPES), len(COLOURS), 1 + 10)
SINGLE_OBJECT_FAMILIES = ("colour_of_shape", "shape_of_colour", "digit_of_shape", "now")


@dataclass(frozen=True)
class Stage:
    until: float  # share of training (0..1) at which the next stage starts
    max_frames: int
    max_events: int  # events per clip: 1..max_events (fewer when the clip is short)
    families: tuple[str, ...]
    # Frame times are i * s seconds, s drawn from 1..max_time_scale: the model meets the
    # longer time spans (and so position gaps) of streams longer than its clips.
    max_time_scale: float = 1.0
    min_frames: int = MIN_FRAMES
    # Before each temporal patch after the first, with probability gap_prob, the clock
    # jumps by up to max_gap seconds: the position gaps between retrieved blocks.
    gap_prob: float = 0.0
    max_gap: float = 0.0
    # With probability late_prob, the clip starts max_start * U(0, 1) seconds into the
    # stream: its positions (and the question's) are those of a late window of a long
    # stream, far from the sink, as every block after the first window is in a session.
    late_prob: float = 0.0
    max_start: float = 0.0


# A family listed twice is drawn twice as often (where it has a question): digits and
# order are the families a model trained on uniform draws still got wrong.
CURRICULUM: tuple[Stage, ...] = (
    Stage(0.4, 8, 1, (*SINGLE_OBJECT_FAMILIES, "digit_of_shape")),
    Stage(1.0, MAX_FRAMES, 3, (*FAMILIES, "digit_of_shape", "which_first"), max_time_scale=2.5),
)


# Continuing a trained checkpoint: every family, 4-24 frames, up to five objects, gaps.
LONG_CURRICULUM: tuple[Stage, ...] = (
    Stage(
        1.0,
        LONG_MAX_FRAMES,
        5,
        (*FAMILIES, "digit_of_shape", "which_first"),
        max_time_scale=2.5,
        gap_prob=0.2,
        max_gap=30.0,
    ),
)

# Continuing a trained checkpoint on the base task's last stage (e.g. with the retrieval loss).
FINETUNE_CURRICULUM: tuple[Stage, ...] = (replace(CURRICULUM[-1], until=1.0),)
# The same, half the clips starting up to an hour into the stream.
LATE_CURRICULUM: tuple[Stage, ...] = (replace(FINETUNE_CURRICULUM[0], late_prob=0.5, max_start=3600.0),)

# The late curriculum with counting drawn three times as often: counting was the family
# the retrieval stages left behind (0.50 on held-out clips, docs/training.md).
COUNT_CURRICULUM: tuple[Stage, ...] = (
    replace(LATE_CURRICULUM[0], families=(*LATE_CURRICULUM[0].families, "count_colour", "count_colour")),
)

CURRICULA: dict[str, tuple[Stage, ...]] = {
    "base": CURRICULUM,
    "long": LONG_CURRICULUM,
    "finetune": FINETUNE_CURRICULUM,
    "late": LATE_CURRICULUM,
    "count": COUNT_CURRICULUM,
}

# Families whose question names one object (or one colour) by an attribute, and which
# column of the object classes that is (0 shape, 1 colour): the retrieval loss's targets.
KEYED_FAMILIES: dict[str, int] = {
    "colour_of_shape": 0,
    "digit_of_shape": 0,
    "shape_of_colour": 1,
    "count_colour": 1,
}


def stage_at(progress: float, curriculum: Sequence[Stage] = CURRICULUM) -> Stage:
    """The curriculum stage at ``progress`` (share of training done; >= 1 is the last stage)."""
    return next((s for s in curriculum if progress < s.until), curriculum[-1])


def synth_sample(
    rng: np.random.Generator, progress: float = 1.0, curriculum: Sequence[Stage] = CURRICULUM
) -> Sample:
    """A random clip of the synthetic world and one question about it, as ``curriculum``
    says at ``progress``; held-out samples use 1.0, the full task."""
    stage = stage_at(progress, curriculum)
    n_frames = int(rng.integers(stage.min_frames, stage.max_frames + 1))
    # an event lasts 2-6 s with a gap after it: about one per 5 frames fits
    most = max(1, min(stage.max_events, n_frames // 5))
    clip = make_clip_sample(
        int(rng.integers(2**31)), n_frames=n_frames, n_events=(1, most), families=stage.families
    )
    scale = float(rng.uniform(1.0, stage.max_time_scale)) if stage.max_time_scale > 1 else 1.0
    times = clip_times(rng, len(clip.frames), scale, stage.gap_prob, stage.max_gap)
    if stage.late_prob > 0 and rng.random() < stage.late_prob:
        start = float(rng.uniform(0.0, stage.max_start))
        times = [t + start for t in times]
    objects = object_labels(clip.world, len(clip.frames))
    return Sample(
        list(clip.frames), times, clip.question, clip.answer, objects, query_key(clip.world, clip.info)
    )


def query_key(world: World, question) -> tuple[int, int] | None:
    """``(attribute column, class)`` the question names its object by, e.g. ``(0, shape
    index of circle)`` for "what colour was the circle?"; None for the other families
    and for questions about no event (a zero count)."""
    column = KEYED_FAMILIES.get(question.family)
    if column is None or not question.event_ids:
        return None
    event = world.events[question.event_ids[0]]
    return (0, SHAPES.index(event.shape)) if column == 0 else (1, COLOURS.index(event.colour))


def clip_times(
    rng: np.random.Generator, n_frames: int, scale: float = 1.0, gap_prob: float = 0.0, max_gap: float = 0.0
) -> list[float]:
    """Frame times ``i * scale`` seconds, the clock jumping by up to ``max_gap`` s (with
    probability ``gap_prob``) before each temporal patch after the first. Times never
    decrease, and the frames of one patch keep one gap, as a retrieved block does."""
    times, offset = [], 0.0
    for i in range(n_frames):
        if i and i % TEMPORAL_PATCH == 0 and gap_prob > 0 and rng.random() < gap_prob:
            offset += float(rng.uniform(0.0, max_gap))
        times.append(i * scale + offset)
    return times


def short_clip_samples(n: int, seed: int = 12345) -> list[tuple[str, Sample]]:
    """``n`` held-out clips of the base task's last stage shape (4-16 frames at 1 fps, one
    to three objects), families drawn uniformly: ``(family, sample)`` pairs.

    The yardstick for "the model learned the task" (``streamvlm eval clips``): seeds
    ``[seed, i]`` never meet training's generator, and uniform families weigh every
    question kind alike, unlike the curriculum's doubled draws.
    """
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        n_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
        clip = make_clip_sample(
            int(rng.integers(2**31)), n_frames=n_frames, n_events=(1, max(1, min(3, n_frames // 5)))
        )
        times = [float(t) for t in range(n_frames)]
        out.append((clip.info.family, Sample(list(clip.frames), times, clip.question, clip.answer)))
    return out


def object_labels(world: World, n_frames: int) -> ObjectLabels:
    """Which object each merged visual token of the first ``n_frames`` frames shows, from
    the event list.

    One instance per object per temporal patch, as it is on the patch's first frame: the
    tokens it covers at least half of (the one it covers most if none), and its classes
    ``(shape, colour, digit)`` (digit 0 = none, else 1 + the digit). Tokens are in the
    vision tower's output order (temporal patch, row, column).
    """
    grid = world.size // TOKEN_PX
    pairs = -(-n_frames // TEMPORAL_PATCH)
    token_object = np.full((pairs, grid, grid), -1, np.int64)
    classes: list[tuple[int, int, int]] = []
    edges = np.arange(grid) * TOKEN_PX
    for t in range(pairs):
        frame = t * TEMPORAL_PATCH
        for e in world.on_screen(frame):
            x, y = e.position(frame)
            cover_x = np.clip(np.minimum(edges + TOKEN_PX, x + e.size) - np.maximum(edges, x), 0, None)
            cover_y = np.clip(np.minimum(edges + TOKEN_PX, y + e.size) - np.maximum(edges, y), 0, None)
            cover = np.outer(cover_y, cover_x)
            covered = cover >= TOKEN_PX * TOKEN_PX / 2
            if not covered.any():
                covered = cover == cover.max()
            token_object[t][covered] = len(classes)
            digit = 0 if e.digit is None else 1 + e.digit
            classes.append((SHAPES.index(e.shape), COLOURS.index(e.colour), digit))
    return ObjectLabels(token_object.reshape(-1), np.asarray(classes, np.int64).reshape(-1, 3))


def vision_sample(rng: np.random.Generator) -> tuple[list[np.ndarray], ObjectLabels]:
    """Two frames (one temporal patch) showing one random object, and its labels: a view
    for pre-training the vision tower alone (``loop.pretrain_vision``)."""
    world = World(int(rng.integers(2**31)), 2.0, n_events=1, durations=(2.0, 2.0))  # 1 fps: 2 frames
    return list(world.frames()), object_labels(world, world.n_frames)


__all__ = [
    "CURRICULA",
    "COUNT_CURRICULUM",
    "CURRICULUM",
    "FINETUNE_CURRICULUM",
    "KEYED_FAMILIES",
    "LATE_CURRICULUM",
    "LONG_CURRICULUM",
    "OBJECT_CLASSES",
    "VOCABULARY",
    "clip_times",
    "object_labels",
    "query_key",
    "short_clip_samples",
    "stage_at",
    "synth_sample",
    "vision_sample",
]
