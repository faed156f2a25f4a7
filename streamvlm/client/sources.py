"""Frame sources for ``streamvlm stream``: a video file or a webcam, as ``(rgb, t)`` pairs.

Both are plain blocking iterators; the streaming command pulls them in a thread. Times
are stream seconds from the first frame: a file's presentation times, a webcam's wall
clock since it opened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from ..errors import ConfigError

OPENCV_HINT = "reading a webcam needs OpenCV: pip install opencv-python-headless"


def file_frames(path: str, fps: float | None) -> Iterator[tuple[np.ndarray, float]]:
    """Frames of a video file, sampled to ``fps`` by presentation time (``None``: all).

    The file is opened now, so a bad path fails before any session is created.
    """
    # streamvlm.ingest brings torch with it (preprocessing): import it only when a file streams
    from ..ingest.sampler import Sampler
    from ..ingest.sources import FileSource

    source = FileSource(path)  # raises VideoOpenError with a one-line reason for a bad path
    return ((frame.rgb, frame.t) for frame in Sampler(fps).sample(source))


def webcam_frames(index: int, fps: float | None) -> Iterator[tuple[np.ndarray, float]]:
    """Frames of webcam ``index`` (OpenCV), at most ``fps`` per second, until it fails.

    The camera is opened now, so a missing OpenCV or camera fails before any session is created.
    """
    try:
        import cv2
    except ImportError:
        raise ConfigError(OPENCV_HINT) from None
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise ConfigError(f"cannot open webcam {index} (is it connected, and not in use?)")
    return _read_webcam(capture, fps)


def _read_webcam(capture, fps: float | None) -> Iterator[tuple[np.ndarray, float]]:
    from ..ingest.sampler import Sampler

    sampler = Sampler(fps)
    start = time.monotonic()
    try:
        while True:
            ok, bgr = capture.read()  # blocks at the camera's own rate: the source's pace
            if not ok:
                return
            t = time.monotonic() - start
            if sampler.keep(t):
                yield np.ascontiguousarray(bgr[..., ::-1]), t
    finally:
        capture.release()
