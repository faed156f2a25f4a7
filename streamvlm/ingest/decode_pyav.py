"""PyAV (FFmpeg) decoding: the default backend, and the probe every backend uses.

Frames are decoded one packet at a time, so memory stays at a few frames whatever the
length of the file. Packets the decoder rejects are skipped and counted; a read error
in the container is skipped too (up to a limit), so one damaged region does not end the
stream and a truncated file yields everything before the cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import EmptyVideoError, VideoOpenError
from .video_info import VideoInfo

# Consecutive container read errors tolerated before the rest of the file is given up.
MAX_CONSECUTIVE_READ_ERRORS = 8

# Codecs that turn text files into pictures; never what a user means by a video.
TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})

VIDEO_HINT = "pass an .mp4/.mkv/.mov/.webm file"


class UnsupportedCodecError(VideoOpenError):
    """The container is fine but this FFmpeg build has no decoder for its video codec."""


RawFrame = tuple[np.ndarray, Fraction | None, Fraction | None]


def normalise_rotation(degrees: float | int | None) -> int:
    """Display rotation in degrees (any sign) → 0, 90, 180 or 270 counter-clockwise.

    Only quarter turns are applied to pixels; other angles are rounded to the nearest.
    """
    return (round((degrees or 0) / 90) % 4) * 90


def rotate_rgb(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation to an ``(H, W, 3)`` frame.

    Checked against decord, which rotates in its filter graph: for ``video_90.mov``
    (tagged -90, i.e. 270 here) the frames agree exactly.
    """
    k = normalise_rotation(rotation) // 90
    # rot90 returns a view with negative strides, which torch.from_numpy rejects.
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def open_container(path: Path):
    """``av.open`` with FFmpeg's errors turned into one-line ``VideoOpenError``s."""
    try:
        # Damaged files can carry tags that are not UTF-8; we never need them verbatim.
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.error.PermissionError as e:
        raise VideoOpenError(f"cannot open '{path}': permission denied; make the file readable") from e
    except av.error.FFmpegError as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise VideoOpenError(
            f"cannot open '{path}': not a video file, or a damaged one (FFmpeg: {reason}); "
            f"{VIDEO_HINT} that is complete"
        ) from e


def video_stream(container, path: Path):
    """The first video stream of ``container``, or a ``VideoOpenError``."""
    if container.format.name == "tty" or any(
        s.codec_context and s.codec_context.name in TEXT_ART_CODECS for s in container.streams.video
    ):
        # FFmpeg's 'tty' demuxer renders any .txt it cannot place as ANSI art "video".
        container.close()
        raise VideoOpenError(
            f"cannot open '{path}': not a video file (FFmpeg reads it as text); {VIDEO_HINT}"
        )
    if not container.streams.video:
        container.close()
        raise VideoOpenError(f"cannot open '{path}': not a video file (no video stream found); {VIDEO_HINT}")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise UnsupportedCodecError(
            f"cannot open '{path}': no decoder for its video codec in this FFmpeg build; "
            "re-encode it to H.264 (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        )
    return stream


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a decoded frame (pixel-identical to decord's output).

    swscale runs single-threaded: its default (one thread per CPU, on top of the
    decoder's frame threads) made the whole pass 3-4x slower on 2 cores (see
    docs/BENCHMARKS.md). PyAV before 14 has no ``threads`` argument and is single
    threaded anyway.
    """
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return frame.to_ndarray(format="rgb24")


class PyAVDecoder:
    """Decodes one file in presentation order as ``(rgb, pts, duration)`` tuples.

    ``pts`` and ``duration`` are exact ``Fraction`` seconds (``None`` when the container
    has none); ``rgb`` is rotated already. ``decode_errors`` counts skipped packets and
    container read errors.
    """

    def __init__(self, path: Path, threads: bool = True):
        self.path = path
        # FFmpeg frame+slice threads: neutral at 240p, ~15% faster at 720p on 2 cores.
        self.threads = threads
        self.decode_errors = 0
        self.rotation = 0  # of the last frame decoded, normalised

    def frames(self) -> Iterator[RawFrame]:
        container = open_container(self.path)
        try:
            stream = video_stream(container, self.path)
            if self.threads:
                stream.thread_type = "AUTO"
            for frame in self._decoded(container, stream):
                tb = frame.time_base or stream.time_base
                pts = frame.pts * tb if frame.pts is not None and tb else None
                dur = frame.duration * tb if frame.duration and tb else None
                self.rotation = normalise_rotation(getattr(frame, "rotation", 0))  # PyAV >= 14
                try:
                    rgb = to_rgb(frame)
                except (av.error.FFmpegError, ValueError):
                    # A pixel format swscale cannot convert: skip the frame, like a bad packet.
                    self.decode_errors += 1
                    continue
                yield rotate_rgb(rgb, self.rotation), pts, dur
        finally:
            container.close()

    def _decoded(self, container, stream) -> Iterator[av.VideoFrame]:
        read_errors = 0
        while read_errors <= MAX_CONSECUTIVE_READ_ERRORS:
            try:
                # demux ends with an empty packet per stream, which flushes the decoder.
                for packet in container.demux(stream):
                    read_errors = 0
                    yield from self._decode_packet(stream, packet)
                return
            except av.error.EOFError:
                break
            except av.error.FFmpegError:
                # A damaged container region: count it and resume reading after it.
                self.decode_errors += 1
                read_errors += 1
        # Reading stopped early: flush the frames still inside the decoder.
        yield from self._decode_packet(stream, None)

    def _decode_packet(self, stream, packet) -> Iterator[av.VideoFrame]:
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:
            # Bad bitstream in this packet: skip it, the next keyframe resynchronises.
            self.decode_errors += 1
            return
        yield from frames


def probe(path: Path, backend: str = "pyav") -> VideoInfo:
    """Open ``path`` with PyAV and decode up to its first frame to learn its geometry.

    Cheap (one frame) and safe on any input, which is why every backend is probed with
    PyAV first. Raises ``VideoOpenError`` for non-videos and ``EmptyVideoError`` when no
    frame decodes.
    """
    container = open_container(path)
    try:
        stream = video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = None
        info = VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rotation=0,
            fps=float(rate) if rate else None,
            duration=duration,
            frame_count=stream.frames or None,
            codec=stream.codec_context.name,
            backend=backend,
        )
    finally:
        container.close()
    decoder = PyAVDecoder(path, threads=False)  # no thread pool to start for one frame
    frames = decoder.frames()
    first = next(frames, None)
    frames.close()
    if first is None:
        raise EmptyVideoError(
            f"'{path}' has a video stream but no decodable frame; re-encode or re-download the file"
        )
    # The display matrix is frame side data in FFmpeg 7+, so geometry comes off a frame.
    rgb = first[0]
    return replace(info, width=rgb.shape[1], height=rgb.shape[0], rotation=decoder.rotation)
