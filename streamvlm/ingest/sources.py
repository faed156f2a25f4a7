"""Video files as iterables of ``Frame``s with real presentation times.

``FileSource(path)`` checks and probes the file at construction (so a bad path fails
at once, with a one-line error) and decodes lazily, one frame at a time, each time it is
iterated. Times come from the container's PTS via ``PresentationClock``; see
``timestamps.py`` for the reorder / missing-PTS / never-backwards rules.

Backends: ``"pyav"`` (default, what ``"auto"`` picks) and ``"decord"`` (optional). With
``"auto"``, decord is tried only when PyAV reads the container but cannot decode a
single frame of it (say, a codec missing from PyAV's FFmpeg build). Why PyAV is the
default is in ``decode_decord.py`` and docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError, EmptyVideoError, VideoOpenError
from . import decode_pyav
from .decode_decord import DecordDecoder, decord_available
from .frames import Frame
from .timestamps import DEFAULT_REORDER_DEPTH, PresentationClock
from .video_info import VideoInfo

BACKENDS = ("auto", "pyav", "decord")


class FileSource:
    """Frames of a video file, in presentation order.

    Args:
        path: a video file (anything FFmpeg reads: .mp4, .mkv, .mov, .webm, ...).
        backend: ``"auto"`` (PyAV, with decord as a fallback for video streams PyAV
            cannot decode), ``"pyav"`` or ``"decord"``.
        reorder_depth: frames held back to put slightly out-of-order PTS back in
            order (0 = none; each costs one decoded frame of memory and latency).

    Attributes:
        info: ``VideoInfo`` from the probe (size after rotation, fps, codec, backend).
        decode_errors: packets/frames skipped in the current (or last) iteration.
        missing_pts: frames whose time was estimated because they had no PTS.
        clamped_pts: frames whose PTS went backwards and were held at the last time.

    Raises:
        VideoOpenError: missing path, a directory, or not a readable video.
        EmptyVideoError: a video stream with no decodable frame.
        ConfigError: unknown backend, or decord requested but not installed.
    """

    def __init__(
        self, path: str | os.PathLike, backend: str = "auto", reorder_depth: int = DEFAULT_REORDER_DEPTH
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend == "decord" and not decord_available():
            raise ConfigError(
                "backend 'decord' needs the decord package, which is not installed; "
                "pip install decord (x86_64 only) or use backend='pyav'"
            )
        if not isinstance(reorder_depth, int) or reorder_depth < 0:
            raise ConfigError(
                f"reorder_depth must be an integer >= 0, got {reorder_depth!r}; use the default (4)"
            )
        self.path = Path(path)
        self.reorder_depth = reorder_depth
        _check_path(self.path)
        self.info: VideoInfo = _probe(self.path, backend)
        self._decoder = None
        self._clock = None

    @property
    def backend(self) -> str:
        """The backend that decodes this file (``"pyav"`` or ``"decord"``)."""
        return self.info.backend

    @property
    def decode_errors(self) -> int:
        """Packets/frames skipped as undecodable in the current (or last) iteration."""
        return self._decoder.decode_errors if self._decoder else 0

    @property
    def missing_pts(self) -> int:
        """Frames of the current (or last) iteration whose time was estimated (no PTS)."""
        return self._clock.missing if self._clock else 0

    @property
    def clamped_pts(self) -> int:
        """Frames of the current (or last) iteration held at the last time (PTS went back)."""
        return self._clock.clamped if self._clock else 0

    def __iter__(self) -> Iterator[Frame]:
        if self.backend == "decord":
            decoder = DecordDecoder(self.path)
            frames = decoder.frames(shape=(self.info.height, self.info.width))
        else:
            decoder = decode_pyav.PyAVDecoder(self.path)
            frames = decoder.frames()
        clock = PresentationClock(self.info.fps, self.reorder_depth)
        self._decoder, self._clock = decoder, clock
        n = 0
        for rgb, t in clock.run(frames):
            yield Frame(rgb=rgb, t=t, index=n)
            n += 1
        if n == 0:
            raise EmptyVideoError(
                f"'{self.path}' yielded no decodable frame; re-encode or re-download the file"
            )

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, backend={self.backend!r})"


def _check_path(path: Path) -> None:
    # Checked here rather than left to FFmpeg, whose errors for these cases are vague.
    if not path.exists():
        raise VideoOpenError(f"cannot open '{path}': no such file; check the path")
    if path.is_dir():
        raise VideoOpenError(
            f"cannot open '{path}': it is a directory; pass the path of a video file inside it"
        )


def _probe(path: Path, backend: str) -> VideoInfo:
    # PyAV probes every file, decord-backed ones included: it is cheap (one frame) and,
    # unlike decord, it rejects broken input with an exception instead of a crash.
    try:
        info = decode_pyav.probe(path)
    except (decode_pyav.UnsupportedCodecError, EmptyVideoError) as pyav_error:
        # PyAV read the container but decoded nothing: decord's own FFmpeg build may
        # still have the decoder. Unreadable containers are not retried with decord:
        # both use FFmpeg's demuxers, and decord is the one that can crash on garbage.
        if backend == "pyav" or not decord_available():
            raise
        try:
            return DecordDecoder(path).info()
        except Exception:
            raise pyav_error from None
    return replace(info, backend="decord") if backend == "decord" else info
