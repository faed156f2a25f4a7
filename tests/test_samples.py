"""The synthetic sample generator: deterministic, and the clip has the size asked for."""

from __future__ import annotations

import av
import numpy as np
import pytest

from streamvlm import samples


def decode(path):
    """(the video stream's codec, pixel format and average rate; its frames; the container's
    duration in us), read while the container is open (PyAV >= 18.1.1 refuses afterwards)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        facts = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": float(stream.average_rate),
        }
        return facts, frames, c.duration


def test_same_seed_decodes_to_identical_frames(make_video):
    a = make_video("a.mp4", num_frames=12, width=96, height=64, fps=6.0, seed=3)
    b = make_video("b.mp4", num_frames=12, width=96, height=64, fps=6.0, seed=3)
    _, fa, _ = decode(a)
    _, fb, _ = decode(b)
    assert len(fa) == len(fb) == 12
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(x, y)


def test_other_seed_gives_other_frames(make_video):
    _, fa, _ = decode(make_video("a.mp4", num_frames=4, seed=0))
    _, fb, _ = decode(make_video("b.mp4", num_frames=4, seed=1))
    assert not np.array_equal(fa[0], fb[0])


@pytest.mark.parametrize(
    ("name", "num_frames", "width", "height", "fps"),
    [("a.mp4", 20, 64, 48, 8.0), ("b.mp4", 15, 160, 120, 5.0), ("c.mkv", 9, 32, 32, 30.0)],
)
def test_frame_count_size_and_duration(make_video, name, num_frames, width, height, fps):
    path = make_video(name, num_frames=num_frames, width=width, height=height, fps=fps)
    stream, frames, duration_us = decode(path)
    assert stream["codec"] == "h264"
    assert stream["pix_fmt"] == "yuv420p"
    assert len(frames) == num_frames
    assert all(f.shape == (height, width, 3) for f in frames)
    assert stream["rate"] == pytest.approx(fps)
    assert duration_us / 1e6 == pytest.approx(num_frames / fps, abs=1.5 / fps)


def test_scene_shows_moving_shapes_and_a_cut():
    frames = list(samples.iter_frames(num_frames=40, width=80, height=60, fps=2.0))
    diffs = [
        np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames[:-1], frames[1:], strict=True)
    ]
    cut = 20  # SCENE_CUT = 0.5 of 40 frames
    assert diffs[cut - 1] == max(diffs)  # the hard cut is the biggest change
    assert sum(d > 0 for d in diffs) > 30  # and the scene keeps moving otherwise


@pytest.mark.parametrize("kwargs", [{"width": 63}, {"height": 8}, {"num_frames": 0}, {"fps": 0}])
def test_bad_arguments_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        samples.write_video(tmp_path / "x.mp4", **kwargs)


def test_bundled_sample_matches_its_description(sample_video):
    stream, frames, duration_us = decode(sample_video)
    assert sample_video.stat().st_size < 1_000_000
    assert len(frames) == round(samples.SAMPLE_SECONDS * samples.SAMPLE_FPS)
    assert frames[0].shape == (samples.SAMPLE_HEIGHT, samples.SAMPLE_WIDTH, 3)
    assert duration_us / 1e6 == pytest.approx(samples.SAMPLE_SECONDS, abs=0.2)


def test_bundled_sample_is_reproducible(sample_video, tmp_path):
    """`python -m streamvlm.samples` regenerates the committed asset.

    Compared with a tolerance, not bit for bit: another PyAV wheel may bundle another
    x264, whose output differs slightly for the same frames.
    """
    assert samples.main([str(tmp_path / "again.mp4")]) == 0
    _, ours, _ = decode(tmp_path / "again.mp4")
    _, bundled, _ = decode(sample_video)
    assert len(ours) == len(bundled)
    for x, y in zip(ours, bundled, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 2.0
