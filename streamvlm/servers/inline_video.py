"""A video sent with a chat completion: checked from its container, then encoded into a
throwaway session.

``InlineVideo(data, suffix, fps, settings)`` writes the bytes to a temporary file of the
server's own and refuses, before a frame is encoded, a video the limits do not allow:
frames too large, a duration over ``max_video_seconds``, or more sampled frames than
``max_video_frames`` by the container's metadata (``VideoInfo.frames_at``). Only a
container that gives no duration is counted while it is decoded. ``watch(engine)`` then
encodes it, counting frames in ``frames`` so that a streamed response can report
progress. Both do blocking work: call them in a thread.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StreamVLMError
from .protocol import ProtocolError
from .settings import ServerSettings

if TYPE_CHECKING:
    from ..runtime.session import Session


class InlineVideo:
    """One chat completion's video, probed and checked; ``watch`` encodes it once.

    Attributes:
        expected_frames: frames the sampler will keep, from the container's metadata
            (``None`` when the container gives no duration).
        frames: frames encoded so far (written by the thread in ``watch``, read for progress).
    """

    def __init__(self, data: bytes, suffix: str, fps: float, settings: ServerSettings):
        from ..ingest import FileSource

        self.fps = fps
        self.settings = settings
        self.frames = 0
        self._dir = tempfile.TemporaryDirectory(prefix="streamvlm-video-")
        try:
            path = Path(self._dir.name) / f"video{suffix}"
            path.write_bytes(data)
            try:
                self.source = FileSource(path, backend="pyav")
            except StreamVLMError as e:
                raise ProtocolError("bad_video", f"the video cannot be opened: {e}") from None
            self.expected_frames = self.source.info.frames_at(fps)
            self._check()
        except BaseException:
            self.close()
            raise

    def _check(self) -> None:
        info, limits = self.source.info, self.settings
        if info.width > limits.max_frame_side or info.height > limits.max_frame_side:
            raise ProtocolError(
                "frame_dimensions",
                f"video frames are {info.width}x{info.height}, over {limits.max_frame_side} per side",
            )
        if info.width * info.height > limits.max_frame_pixels:
            raise ProtocolError(
                "frame_dimensions",
                f"video frames are {info.width}x{info.height}, over {limits.max_frame_pixels} pixels",
            )
        if info.duration is not None and info.duration > limits.max_video_seconds:
            raise ProtocolError(
                "video_too_long",
                f"the video lasts {info.duration:.0f} s, over {limits.max_video_seconds:g} s",
            )
        if self.expected_frames is not None and self.expected_frames > limits.max_video_frames:
            raise self._too_many_frames(f"{self.expected_frames} frames")

    def _too_many_frames(self, how_many: str) -> ProtocolError:
        return ProtocolError(
            "video_too_long",
            f"the video has {how_many} at {self.fps:g} fps, over the limit of {self.settings.max_video_frames}; "
            "send a shorter clip or a lower streamvlm.fps",
        )

    def progress(self) -> str:
        """``12/19 frames`` (``12 frames`` when the container did not say how many)."""
        total = f"/{self.expected_frames}" if self.expected_frames is not None else ""
        return f"{self.frames}{total} frames"

    def watch(self, engine, stop: threading.Event | None = None) -> Session:
        """A new session that has watched the video (runs in a thread; once).

        ``stop``, when set, ends the encoding at the next frame (the client has gone):
        the session is closed and ``ProtocolError('cancelled')`` raised. The temporary
        file is removed whatever happens.
        """
        from ..ingest import Sampler

        limit = self.settings.max_video_frames
        try:
            session = engine.new_session()  # as the model recommends
            try:
                for frame in Sampler(self.fps).sample(self.source):
                    if stop is not None and stop.is_set():
                        raise ProtocolError("cancelled", "the client went away while the video was encoded")
                    if self.frames == limit:  # only a container that hid its duration gets here
                        raise self._too_many_frames(f"more than {limit} frames")
                    session.add_frame(frame.rgb, frame.t)
                    self.frames += 1
                if self.frames == 0:
                    raise ProtocolError("bad_video", "no frame of the video could be decoded")
                session.flush()
            except ProtocolError:
                session.close()
                raise
            except StreamVLMError as e:  # the decoder's or the session's complaint about the frames
                session.close()
                raise ProtocolError("bad_video", str(e)) from None
            except BaseException:
                session.close()
                raise
            return session
        finally:
            self.close()

    def close(self) -> None:
        """Remove the temporary file (idempotent)."""
        self._dir.cleanup()
