"""PresentationClock rules and the Sampler's frame choice, on plain numbers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from streamvlm.errors import ConfigError
from streamvlm.ingest import FileSource, Frame, Sampler, sample_frames
from streamvlm.ingest.synthetic import pattern_number, write_video
from streamvlm.ingest.timestamps import PresentationClock


def clock_run(pts, depth=4, fps=10.0, durations=None):
    clock = PresentationClock(fps, depth)
    items = [(i, p, None if durations is None else durations[i]) for i, p in enumerate(pts)]
    out = list(clock.run(items))
    return [i for i, _ in out], [t for _, t in out], clock


def test_clock_times_are_relative_to_the_first_pts_and_exact():
    order, times, clock = clock_run([Fraction(10_000 + 33 * i, 1000) for i in range(4)])
    assert order == [0, 1, 2, 3]
    assert times == [0.0, 0.033, 0.066, 0.099]  # exact: subtracted as fractions
    assert (clock.missing, clock.clamped) == (0, 0)


def test_clock_reorders_within_depth():
    order, times, clock = clock_run([0.0, 0.2, 0.1, 0.4, 0.3, 0.5], depth=1)
    assert order == [0, 2, 1, 4, 3, 5]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert clock.clamped == 0


def test_clock_clamps_disorder_deeper_than_the_buffer():
    order, times, clock = clock_run([0.0, 0.1, 0.5, 0.6, 0.7, 0.2], depth=2)
    # 0.2 arrives 4 places late: released after 0.5 and held at 0.5, never earlier.
    assert order == [0, 1, 2, 5, 3, 4]
    assert times == pytest.approx([0.0, 0.1, 0.5, 0.5, 0.6, 0.7])
    assert clock.clamped == 1


def test_clock_never_goes_below_the_first_frame():
    _, times, clock = clock_run([1.0, 0.5, 2.0], depth=0)
    assert times == [0.0, 0.0, 1.0]
    assert clock.clamped == 1


def test_clock_estimates_missing_pts_from_duration_or_fps():
    _, times, clock = clock_run([0.0, None, None, 1.0], fps=10.0)
    assert times == pytest.approx([0.0, 0.1, 0.2, 1.0])
    assert clock.missing == 2
    _, times, clock = clock_run([0.0, None, 0.5], durations=[0.25, None, None])
    assert times == pytest.approx([0.0, 0.25, 0.5])  # the previous frame's own duration
    _, times, clock = clock_run([None, None], fps=None)
    assert times == pytest.approx([0.0, 1 / 30])  # no rate known: assume 30 fps
    assert clock.missing == 2


# ------------------------------------------------------------------------- sampler


def frames_at(times):
    return [Frame(rgb=np.zeros((2, 2, 3), np.uint8), t=t, index=i) for i, t in enumerate(times)]


def kept(times, fps):
    return [f.t for f in Sampler(fps).sample(frames_at(times))]


def test_sampler_constant_30fps_to_1_and_2_fps():
    times = [round(i / 30, 3) for i in range(91)]  # 0 .. 3.0 s, ms-rounded like Matroska
    assert kept(times, 1) == [0.0, 1.0, 2.0, 3.0]
    assert kept(times, 2) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert kept(times, 3) == [0.0, 0.333, 0.667, 1.0, 1.333, 1.667, 2.0, 2.333, 2.667, 3.0]


def test_sampler_picks_first_frame_at_or_after_each_tick_for_vfr():
    times = [0.0, 0.1, 0.15, 0.5, 1.2, 1.25, 2.0, 2.04, 3.9, 4.1]
    assert kept(times, 1) == [0.0, 1.2, 2.0, 3.9, 4.1]
    # A gap (2.04 -> 3.9) yields one frame, not a burst: 3.9 serves ticks 2.5 .. 3.5.
    assert kept(times, 2) == [0.0, 0.5, 1.2, 2.0, 3.9, 4.1]
    assert kept(times, 10) == [0.0, 0.1, 0.5, 1.2, 2.0, 3.9, 4.1]


def test_sampler_keeps_everything_for_none_or_zero_or_slow_input():
    times = [0.0, 0.01, 0.02, 5.0]
    assert kept(times, None) == times
    assert kept(times, 0) == times
    assert kept([0.0, 1.0, 2.0], 4) == [0.0, 1.0, 2.0]


def test_sampler_float_jitter_counts_as_on_tick():
    assert kept([0.0, 0.9999999999, 1.9999999, 2.5], 1) == [0.0, 0.9999999999, 1.9999999]
    assert kept([0.0, 0.998, 1.5], 1) == [0.0, 1.5]  # 2 ms early is a different frame


def test_sampler_is_streaming_and_resettable():
    sampler = Sampler(1.0)
    assert [sampler.keep(t) for t in (0.0, 0.4, 1.0, 1.1)] == [True, False, True, False]
    sampler.reset()
    assert sampler.keep(0.0)
    assert [f.t for f in sample_frames(frames_at([0.0, 0.5, 1.0]), fps=1)] == [0.0, 1.0]


@pytest.mark.parametrize("fps", [-1, float("nan"), float("inf"), "2", True])
def test_sampler_rejects_bad_fps(fps):
    with pytest.raises(ConfigError, match="sampling fps must be a finite number >= 0") as e:
        Sampler(fps)
    assert "\n" not in str(e.value)


def test_sampler_on_a_vfr_file(tmp_path):
    times = [0.0, 0.3, 0.45, 0.9, 1.3, 1.35, 2.6, 3.05, 3.1, 3.6, 4.0]
    source = FileSource(write_video(tmp_path / "vfr.mkv", times=times))
    picked = {
        fps: [(f.t, pattern_number(f.rgb, len(times))) for f in Sampler(fps).sample(source)] for fps in (1, 2)
    }
    assert picked[1] == [(0.0, 0), (1.3, 4), (2.6, 6), (3.05, 7), (4.0, 10)]
    assert picked[2] == [(0.0, 0), (0.9, 3), (1.3, 4), (2.6, 6), (3.05, 7), (3.6, 9), (4.0, 10)]
