"""The synthetic world as a training task: clips of 4-16 frames at 1 fps, one question each."""

from __future__ import annotations

import numpy as np

from ..synth import VOCABULARY, make_clip_sample
from .batches import Sample

MIN_FRAMES, MAX_FRAMES = 4, 16


def synth_sample(rng: np.random.Generator) -> Sample:
    """A random clip of the synthetic world (1-3 events) and one question about it."""
    n_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    # an event lasts 2-6 s with a gap after it: about one per 5 frames fits
    most = max(1, min(3, n_frames // 5))
    clip = make_clip_sample(int(rng.integers(2**31)), n_frames=n_frames, n_events=(1, most))
    times = [i / 1.0 for i in range(len(clip.frames))]
    return Sample(list(clip.frames), times, clip.question, clip.answer)


__all__ = ["VOCABULARY", "synth_sample"]
