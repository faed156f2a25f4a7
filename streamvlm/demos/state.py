"""What the demo keeps per browser tab: a session, its stream clock and its thumbnails.

Plain Python (no Gradio): the Gradio handlers in ``app.py`` are thin wrappers over these
classes, and tests can drive them directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import MemoryConfig
from ..errors import ConfigError
from .thumbnails import Thumbnail, ThumbnailRing

# Frames are stamped with at least this much time between them: the session refuses a
# frame whose time goes backwards, and the webcam and a video may feed one session at once.
_MIN_STEP_S = 1e-3
# Times closer than this are the same frame's (as ``ThumbnailRing.between`` matches them).
_TIME_EPS = 1e-6
# How often a video played faster than real time looks for room in the encoder queue.
_ROOM_POLL_S = 0.02


@dataclass(frozen=True)
class RetrievedFrames:
    """One block an answer attended to and the thumbnails still remembered for its span."""

    block: int  # the block's id in the session
    t_start: float  # stream seconds of its first frame
    t_end: float  # stream seconds of its last frame
    tier: str  # where its KV was read from: "device", "host", "disk" (or "pending": not stored yet)
    thumbnails: list[Thumbnail]  # the pictures still kept of its frames, oldest first
    # some of its frames are older than the thumbnail ring: their pictures were evicted
    pictures_lost: bool = False


class DemoSession:
    """One browser tab's stream: a ``Session`` fed through its encoder thread, never blocking.

    Stream time is wall-clock seconds since the tab's session was created, for webcam
    frames and video frames alike, so that both can feed one session and retrieved
    time spans read as "seconds since you opened the page".
    """

    def __init__(self, engine, memory: MemoryConfig | None = None, thumbnails: int = 512):
        self.session = engine.new_session(memory)
        self.thumbnails = ThumbnailRing(thumbnails)
        self._origin = time.monotonic()
        self._last_t: float | None = None
        self._feed_lock = threading.Lock()
        self._answer_lock = threading.Lock()
        self._closed = False
        self.last_used = time.monotonic()

    def clock(self) -> float:
        """Seconds since this session started: the time the next live frame is stamped with."""
        return time.monotonic() - self._origin

    def push(self, rgb: np.ndarray, t: float | None = None) -> bool:
        """Queue frame ``rgb`` at stream time ``t`` (default: now); False when it was dropped
        (by the full queue, or because the session is closed).

        Times are nudged forward to stay increasing when two sources interleave.
        """
        with self._feed_lock:
            if self._closed:  # a handler that fetched this session just before a reset
                return False
            t = self.clock() if t is None else float(t)
            if self._last_t is not None:
                t = max(t, self._last_t + _MIN_STEP_S)
            accepted = self.session.push_frame(rgb, t)  # checks the frame: raises before we record it
            self._last_t = t
            self.thumbnails.add(t, rgb)
            self.last_used = time.monotonic()
            return accepted

    def play(
        self, frames: Iterator, realtime: bool = True, stopped: Callable[[], bool] = lambda: False
    ) -> Iterator[tuple[np.ndarray, float]]:
        """Feed ``frames`` (``Frame``s of a file, in order) as a live stream; yields ``(rgb, t)`` as each goes in.

        Each frame enters at the session time where playback started plus its own
        timestamp (into a session with no frames yet, at its own timestamp: a person then
        reads the video's own times). With ``realtime`` frames go in at the pace of the
        video, as a camera would have delivered them (frames the encoder cannot keep up
        with are dropped by the queue); without, as fast as the encoder takes them, and
        none is dropped.
        """
        base = self.clock() if self._last_t is not None else 0.0
        started, first = time.monotonic(), None
        for frame in frames:
            if stopped():
                return
            t = base + frame.t
            first = frame.t if first is None else first
            if realtime:
                wait = (frame.t - first) - (time.monotonic() - started)
                if wait > 0:
                    time.sleep(wait)
            elif not self._wait_for_room(stopped):
                return
            self.push(frame.rgb, t)
            yield frame.rgb, t

    def _wait_for_room(self, stopped: Callable[[], bool]) -> bool:
        """Wait until the encoder queue is less than half full, so that a frame pushed now
        is not dropped (a webcam may feed the same queue); False when ``stopped``."""
        room = max(1, self.session.memory.queue_frames // 2)
        while self.session.queue_counts()[1] >= room:
            if stopped():
                return False
            time.sleep(_ROOM_POLL_S)
        return True

    def frames_waiting(self) -> int:
        """Frames sent that the encoder has not taken yet: a question asked now waits for them."""
        return self.session.queue_counts()[1]

    def ask_stream(self, question: str, **options):
        """Start answering ``question`` (see ``Session.ask_stream``); one answer at a time per tab.

        Raises:
            ConfigError: an answer of this tab is still streaming.
        """
        if not self._answer_lock.acquire(blocking=False):
            raise ConfigError("an answer is still streaming in this tab; wait for it to finish")
        try:
            stream = self.session.ask_stream(question, **options)
        except BaseException:
            self._answer_lock.release()
            raise
        self.last_used = time.monotonic()
        return _Guarded(stream, self._answer_lock)

    def retrieved(self, answer) -> list[RetrievedFrames]:
        """For each block ``answer`` attended (oldest first), its span and remembered thumbnails.

        The ring holds the newest frames, so a block's pictures were evicted exactly when it
        starts before the oldest picture kept.
        """
        oldest = self.thumbnails.oldest
        return [
            RetrievedFrames(
                b.id,
                b.t_start,
                b.t_end,
                b.tier,
                self.thumbnails.between(b.t_start, b.t_end),
                pictures_lost=oldest is None or b.t_start < oldest - _TIME_EPS,
            )
            for b in sorted(answer.blocks, key=lambda b: b.t_start)
        ]

    def stats(self):
        """``Session.stats()`` of the stream."""
        return self.session.stats()

    def close(self) -> None:
        """Stop the encoder thread (after the frames already queued) and release the session's memory."""
        with self._feed_lock:
            if self._closed:
                return
            self._closed = True
        self.session.close()


class _Guarded:
    """An ``AnswerStream`` that releases its tab's answer lock when it ends or is abandoned."""

    def __init__(self, stream, lock: threading.Lock):
        self.stream = stream
        self._lock = lock
        self._released = False

    @property
    def answer(self):
        return self.stream.answer

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.stream
        finally:
            self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._lock.release()


class DemoSessions:
    """The demo's sessions, one per browser tab (Gradio's session hash), at most ``max_sessions``.

    A tab's session is created on its first frame or question and closed when the tab
    closes (Gradio's unload event) or when the app shuts down.
    """

    def __init__(
        self, engine, memory: MemoryConfig | None = None, max_sessions: int = 8, thumbnails: int = 512
    ):
        if max_sessions < 1:
            raise ConfigError(f"max_sessions must be >= 1, got {max_sessions}")
        self.engine = engine
        self.memory = memory
        self.max_sessions = max_sessions
        self.thumbnails = thumbnails
        self._sessions: dict[str, DemoSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: str) -> DemoSession | None:
        """The tab's session, or ``None`` before its first frame or question."""
        return self._sessions.get(key)

    def get_or_create(self, key: str) -> DemoSession:
        """The tab's session, created now if it has none.

        Raises:
            ConfigError: ``max_sessions`` tabs already have one.
        """
        with self._lock:  # creation encodes the system prompt: do it once per tab
            if key in self._sessions:
                return self._sessions[key]
            if len(self._sessions) >= self.max_sessions:
                raise ConfigError(
                    f"the demo already serves {self.max_sessions} sessions; close a tab or try later"
                )
            session = DemoSession(self.engine, self.memory, self.thumbnails)
            self._sessions[key] = session
            return session

    def sessions(self) -> list[DemoSession]:
        """The open sessions (a snapshot)."""
        return list(self._sessions.values())

    def close(self, key: str) -> None:
        """Close the tab's session, if it has one."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        """Close every session (at shutdown)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()


def video_frames(path: str | Path, fps: float):
    """The frames of the video at ``path`` sampled at ``fps`` (see ``FileSource`` and ``Sampler``)."""
    from ..ingest import FileSource, Sampler

    return Sampler(fps).sample(FileSource(path))
