"""FileSource: real camera files, files the tests write, and broken input, on both backends."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import av
import numpy as np
import pytest

from streamvlm.errors import ConfigError, EmptyVideoError, VideoOpenError
from streamvlm.ingest import FileSource, Frame, VideoInfo
from streamvlm.ingest.decode_decord import decord_available
from streamvlm.ingest.synthetic import pattern_number, write_video

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"

BACKENDS = [
    "pyav",
    pytest.param(
        "decord", marks=pytest.mark.skipif(not decord_available(), reason="decord is not installed here")
    ),
]


def shared(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real footage {path} is not present (expected in ../shared/videos from the repo root)")
    return path


def times(frames: list[Frame]) -> list[float]:
    return [f.t for f in frames]


# ---------------------------------------------------------------------- real footage


@pytest.mark.parametrize("backend", BACKENDS)
def test_pancake_mkv_frames_sizes_and_pts_times(backend):
    source = FileSource(shared("flipping_a_pancake.mkv"), backend=backend)
    assert source.info == VideoInfo(
        width=426,
        height=240,
        rotation=0,
        fps=30.0,
        duration=pytest.approx(10.381),
        frame_count=None,
        codec="h264",
        backend=backend,
    )
    frames = list(source)
    assert len(frames) == 310
    assert [f.index for f in frames] == list(range(310))
    assert all(f.rgb.shape == (240, 426, 3) and f.rgb.dtype == np.uint8 for f in frames)
    # Matroska stores milliseconds: PTS times are 0, 0.033, 0.067, not i / 30.
    assert times(frames)[:4] == [0.0, 0.033, 0.067, 0.1]
    assert frames[-1].t == pytest.approx(10.3)
    assert np.all(np.diff(times(frames)) > 0)
    assert source.decode_errors == source.missing_pts == source.clamped_pts == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_90_mov_rotation_applied(backend):
    source = FileSource(shared("video_90.mov"), backend=backend)
    assert (source.info.width, source.info.height, source.info.rotation) == (320, 568, 270)
    frames = list(source)
    assert len(frames) == 3
    assert all(f.rgb.shape == (568, 320, 3) for f in frames)
    assert times(frames) == pytest.approx([0.0, 1 / 30, 2 / 30], abs=1e-6)


@pytest.mark.skipif(not decord_available(), reason="decord is not installed here")
@pytest.mark.parametrize("name", ["video_90.mov", "flipping_a_pancake.mkv"])
def test_pyav_and_decord_give_the_same_pixels(name):
    path = shared(name)
    # H.264 decoding is exact and both convert with swscale, so the frames are identical:
    # this pins PyAV's rotation direction to decord's.
    for a, b in zip(FileSource(path, "pyav"), itertools.islice(FileSource(path, "decord"), 12), strict=False):
        assert a.t == pytest.approx(b.t, abs=1e-6)  # decord keeps times in float32
        np.testing.assert_array_equal(a.rgb, b.rgb)


def test_auto_backend_is_pyav():
    assert FileSource(shared("video_90.mov")).backend == "pyav"


# ---------------------------------------------------------- videos written by the test


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_fps_file(tmp_path, backend):
    path = write_video(tmp_path / "cfr.mp4", n_frames=12, width=64, height=48, fps=8)
    source = FileSource(path, backend=backend)
    assert (source.info.width, source.info.height, source.info.fps, source.info.frame_count) == (
        64,
        48,
        8.0,
        12,
    )
    frames = list(source)
    assert times(frames) == pytest.approx([i / 8 for i in range(12)], abs=1e-3)
    assert [pattern_number(f.rgb, 12) for f in frames] == list(range(12))


VFR_TIMES = [0.0, 0.1, 0.15, 0.5, 1.2, 1.25, 2.0, 2.04]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_gives_real_times(tmp_path, suffix):
    path = write_video(tmp_path / f"vfr{suffix}", times=VFR_TIMES)
    frames = list(FileSource(path, backend="pyav"))
    assert times(frames) == pytest.approx(VFR_TIMES, abs=1e-9)
    assert [pattern_number(f.rgb, len(VFR_TIMES)) for f in frames] == list(range(len(VFR_TIMES)))


@pytest.mark.skipif(not decord_available(), reason="decord is not installed here")
def test_decord_vfr_mp4_times_and_mkv_estimates(tmp_path):
    frames = list(FileSource(write_video(tmp_path / "vfr.mp4", times=VFR_TIMES), backend="decord"))
    assert times(frames) == pytest.approx(VFR_TIMES, abs=1e-6)
    # decord 0.6 reports no timestamps (~9.2e15) for this short Matroska file: the times
    # are estimated from the nominal rate (30 fps) and counted.
    source = FileSource(write_video(tmp_path / "vfr.mkv", times=VFR_TIMES[:7]), backend="decord")
    frames = list(source)
    assert source.missing_pts == 7
    assert times(frames) == pytest.approx([i / 30 for i in range(7)])


def test_rotated_file_matches_display_orientation(tmp_path):
    # Tagged 90 degrees counter-clockwise: the raw top-left block ends up bottom-left.
    path = write_video(tmp_path / "rot.mp4", n_frames=4, width=128, height=64, rotation=90)
    source = FileSource(path, backend="pyav")
    assert (source.info.width, source.info.height, source.info.rotation) == (64, 128, 90)
    rgb = list(source)[3].rgb  # pattern block level 120 in frame 3
    assert rgb.shape == (128, 64, 3)
    assert abs(rgb[-28:-4, 4:12].mean() - 120) < 6
    assert abs(rgb[4:28, 4:12].mean() - 120) > 20
    if decord_available():
        for a, b in zip(source, FileSource(path, backend="decord"), strict=True):
            np.testing.assert_array_equal(a.rgb, b.rgb)


def test_iterates_lazily_and_repeatably(tmp_path):
    path = write_video(tmp_path / "clip.mkv", n_frames=10, fps=10)
    source = FileSource(path)
    first_two = list(itertools.islice(source, 2))
    assert times(first_two) == [0.0, 0.1]
    assert times(list(source)) == pytest.approx([i / 10 for i in range(10)])


def _remux(src: Path, dst: Path, edit) -> Path:
    """Copy the packets of ``src`` into ``dst`` after ``edit(index, packet)``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        packets = [p for p in inp.demux(inp.streams.video[0]) if p.dts is not None]
        for i, packet in enumerate(packets):
            edit(i, packet)
            packet.stream = stream
            out.mux(packet)
    return dst


def _swap_pts(i, packet):
    # Broken muxing: PTS of frames 3/4 and 7/8 exchanged (10 fps, ms time base). DTS
    # lags one frame so every PTS >= DTS, which the muxer insists on.
    swap = {3: 4, 4: 3, 7: 8, 8: 7}
    packet.pts = 100 * swap.get(i, i)
    packet.dts = 100 * (i - 1)


def test_out_of_order_pts_are_reordered(tmp_path):
    src = write_video(tmp_path / "src.mkv", n_frames=10, fps=10)
    path = _remux(src, tmp_path / "swapped.mkv", _swap_pts)
    source = FileSource(path)
    frames = list(source)
    assert times(frames) == pytest.approx([i / 10 for i in range(10)])
    # Frames come out by PTS: the content of packets 3/4 and 7/8 swaps places.
    assert [pattern_number(f.rgb, 10) for f in frames] == [0, 1, 2, 4, 3, 5, 6, 8, 7, 9]
    assert source.clamped_pts == 0


def test_out_of_order_pts_without_buffer_are_clamped(tmp_path):
    src = write_video(tmp_path / "src.mkv", n_frames=10, fps=10)
    path = _remux(src, tmp_path / "swapped.mkv", _swap_pts)
    source = FileSource(path, reorder_depth=0)
    frames = list(source)
    # Never earlier than the last emitted time: 0.3 after 0.4 is held at 0.4.
    assert times(frames) == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.4, 0.5, 0.6, 0.8, 0.8, 0.9])
    assert source.clamped_pts == 2


def test_missing_pts_are_estimated_and_counted(tmp_path):
    # A raw H.264 elementary stream has no timestamps at all.
    src = write_video(tmp_path / "src.mkv", n_frames=6, fps=25)
    path = tmp_path / "raw.h264"
    with av.open(str(src)) as inp, av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    source = FileSource(path)
    frames = list(source)
    assert source.missing_pts == 6
    assert times(frames) == pytest.approx([i / source.info.fps for i in range(6)])


def test_truncated_mkv_yields_the_frames_before_the_cut(tmp_path):
    full = write_video(tmp_path / "full.mkv", n_frames=60, width=64, height=48, fps=30)
    cut = tmp_path / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    expected = times(list(FileSource(full)))
    for backend in ("pyav", "decord") if decord_available() else ("pyav",):
        frames = list(FileSource(cut, backend=backend))
        assert 10 < len(frames) < 60
        assert times(frames) == expected[: len(frames)]
        assert [pattern_number(f.rgb, 12) for f in frames[:12]] == list(range(12))


def test_truncated_faststart_mp4_yields_frames(tmp_path):
    full = write_video(
        tmp_path / "full.mp4", n_frames=60, fps=30, container_options={"movflags": "faststart"}
    )
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    frames = list(FileSource(cut))
    assert 10 < len(frames) < 60
    assert times(frames) == pytest.approx([i / 30 for i in range(len(frames))], abs=1e-3)


def test_truncated_mp4_without_index_is_a_clear_open_error(tmp_path):
    full = write_video(tmp_path / "full.mp4", n_frames=30)  # moov atom written last
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(VideoOpenError, match=r"cannot open '.*cut\.mp4': not a video file, or a damaged one"):
        FileSource(cut)


def test_corrupt_packets_are_skipped_and_counted(tmp_path):
    path = write_video(tmp_path / "clip.mkv", n_frames=90, width=128, height=96, fps=30, options={"g": "30"})
    with av.open(str(path)) as container:
        payloads = [bytes(p) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    for k in (40, 41, 42):  # three P-frames mid-GOP: overwrite all but the NAL length
        at = data.find(payloads[k])
        data[at + 4 : at + len(payloads[k])] = b"\xff" * (len(payloads[k]) - 4)
    path.write_bytes(bytes(data))
    source = FileSource(path, backend="pyav")
    frames = list(source)
    assert source.decode_errors == 3
    assert len(frames) == 87
    assert frames[-1].t == pytest.approx(89 / 30, abs=1e-3)  # the stream went on to the end
    assert np.all(np.diff(times(frames)) > 0)


# ------------------------------------------------------------------------ bad input


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_missing_path(tmp_path, backend):
    if backend == "decord" and not decord_available():
        pytest.skip("decord is not installed here")
    with pytest.raises(VideoOpenError) as e:
        FileSource(tmp_path / "nope.mp4", backend=backend)
    assert _one_line(e.value) == f"cannot open '{tmp_path / 'nope.mp4'}': no such file; check the path"


def test_directory(tmp_path):
    with pytest.raises(VideoOpenError, match="it is a directory; pass the path of a video file") as e:
        FileSource(tmp_path)
    _one_line(e.value)


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_garbage_with_mp4_name(tmp_path, backend):
    if backend == "decord" and not decord_available():
        pytest.skip("decord is not installed here")
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoOpenError, match="not a video file, or a damaged one") as e:
        FileSource(path, backend=backend)
    assert "pass an .mp4/.mkv/.mov/.webm file" in _one_line(e.value)


@pytest.mark.parametrize("text", ["hello\n", "these are not frames\n" * 20])
def test_text_file(tmp_path, text):
    # FFmpeg rejects the short one, and reads the long one as ANSI-art "video".
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(VideoOpenError, match=r"cannot open '.*notes\.txt': not a video file") as e:
        FileSource(path)
    _one_line(e.value)


def test_container_without_video_stream(tmp_path):
    path = tmp_path / "audio_only.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(VideoOpenError, match=r"not a video file \(no video stream found\)") as e:
        FileSource(path)
    _one_line(e.value)


def test_zero_frame_video_is_empty(tmp_path):
    path = write_video(tmp_path / "empty.avi", n_frames=0)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1  # a real video stream, with no frames
    with pytest.raises(EmptyVideoError, match="has a video stream but no decodable frame") as e:
        FileSource(path)
    _one_line(e.value)


def test_bad_options(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n_frames=2)
    with pytest.raises(ConfigError, match="unknown video backend 'ffmpeg'; use one of auto, pyav, decord"):
        FileSource(path, backend="ffmpeg")
    with pytest.raises(ConfigError, match="reorder_depth"):
        FileSource(path, reorder_depth=-1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n_frames=2)
    path.chmod(0)
    with pytest.raises(VideoOpenError, match="permission denied"):
        FileSource(path)


@pytest.mark.skipif(not decord_available(), reason="decord is not installed here")
def test_auto_falls_back_to_decord_when_pyav_decodes_nothing(tmp_path, monkeypatch):
    from streamvlm.ingest import decode_pyav

    path = write_video(tmp_path / "clip.mp4", n_frames=4, fps=10)

    def no_decoder(p, backend="pyav"):
        raise decode_pyav.UnsupportedCodecError(f"cannot open '{p}': no decoder")

    monkeypatch.setattr(decode_pyav, "probe", no_decoder)
    source = FileSource(path)
    assert source.backend == "decord"
    assert times(list(source)) == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)
    with pytest.raises(VideoOpenError, match="no decoder"):
        FileSource(path, backend="pyav")


@pytest.mark.skipif(not decord_available(), reason="decord is not installed here")
def test_decord_malformed_rotated_frames_are_dropped(tmp_path):
    # decord 0.6 returns 4-channel garbage for a 64x48 frame tagged 90 degrees; such
    # frames are counted, never passed on, and a source left with none is empty.
    source = FileSource(write_video(tmp_path / "rot.mp4", n_frames=3, rotation=90), backend="decord")
    with pytest.raises(EmptyVideoError, match="yielded no decodable frame"):
        list(source)
    assert source.decode_errors == 3
    assert [f.rgb.shape for f in FileSource(source.path, backend="pyav")] == [(64, 48, 3)] * 3
