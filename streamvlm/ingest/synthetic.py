"""Write small synthetic videos with PyAV, for tests, benchmarks and sample assets.

Frames are a moving colour pattern whose mean brightness encodes the frame number, so a
test can tell which source frame it got back after lossy coding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern_frame(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i`` of the synthetic pattern: ``(height, width, 3)`` uint8.

    A diagonal gradient that scrolls with ``i`` (so the codec has real motion to code)
    plus a flat block in the top-left corner whose grey level is ``(40 * i) % 256``.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (xx + 3 * i) % 256
    rgb[..., 1] = (yy + 5 * i) % 256
    rgb[..., 2] = (xx + yy + 7 * i) % 256
    bh, bw = max(2, height // 4), max(2, width // 4)
    rgb[:bh, :bw] = (40 * i) % 256
    return rgb


def write_video(
    path: str | Path,
    n_frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: float = 30.0,
    times: Sequence[float] | None = None,
    codec: str = "libx264",
    rotation: int = 0,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    draw: Callable[[int, int, int], np.ndarray] = pattern_frame,
) -> Path:
    """Encode ``n_frames`` frames drawn by ``draw(i, width, height)`` (default: the test
    pattern) to ``path`` and return the path.

    ``times`` (seconds, one per frame) gives each frame its own PTS, which makes a
    variable-frame-rate file; without it frames are ``1/fps`` apart. ``rotation`` writes
    a display-matrix rotation tag (degrees counter-clockwise, as PyAV reports it).
    ``options`` go to the encoder (x264 defaults: ``preset=ultrafast``, no B-frames),
    ``container_options`` to the muxer (e.g. ``{"movflags": "faststart"}``). With
    ``n_frames=0`` and an .avi name this writes a video stream with no frames (the mp4
    muxer drops empty tracks, Matroska readers reject a file with no clusters).
    The encoder runs on one thread, so the output bytes depend only on the input.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if times is not None:
        n_frames = len(times)
    # A millisecond time base represents any test timestamp exactly enough (1 ms).
    time_base = Fraction(1, 1000)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        # Both the muxer and the encoder get the fine time base: the encoder's default
        # (1/fps) would round variable-frame-rate timestamps onto the nominal grid.
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            # No B-frames keeps the test files simple; 'ultrafast' keeps tests fast.
            stream.options = {"preset": "ultrafast", "bf": "0", **(options or {})}
        elif options:
            stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        # Writes the header even when no frame follows (a valid zero-frame container).
        container.start_encoding()
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(draw(i, width, height), format="rgb24")
            t = times[i] if times is not None else i / fps
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def pattern_number(rgb: np.ndarray, candidates: int) -> int:
    """Which ``pattern_frame`` index in ``range(candidates)`` an (unrotated) frame shows.

    Reads the grey block in the top-left corner; lossy coding moves it by a few levels,
    far less than the gap between candidate levels for ``candidates <= 12``.
    """
    h, w = rgb.shape[:2]
    block = rgb[: max(2, h // 4) - 1, : max(2, w // 4) - 1].astype(float).mean()
    levels = [(40 * i) % 256 for i in range(candidates)]
    return int(np.argmin([abs(block - v) for v in levels]))
