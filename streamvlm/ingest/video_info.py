"""What a source knows about its video before decoding it all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts, as the frames will come out of the source.

    ``width``/``height`` are after rotation. ``rotation`` is the container's display
    rotation, normalised to 0/90/180/270 degrees counter-clockwise (PyAV reports a
    90-degree clockwise tag as -90, stored here as 270). ``fps`` is the nominal rate the
    container declares (real times come from PTS; a variable-frame-rate file's nominal
    rate is only a hint); ``duration`` and ``frame_count`` are ``None`` when the container
    does not say. ``backend`` is the decoder that will produce the frames.
    """

    width: int
    height: int
    rotation: int
    fps: float | None
    duration: float | None
    frame_count: int | None
    codec: str
    backend: str
