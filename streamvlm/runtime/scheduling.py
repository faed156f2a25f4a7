"""Sharing one device between encoding and answering, and bounding what waits for it.

``FairLock`` serves model work first come, first served. The encoder takes it once per
chunk and the answer path once for its prefill and once per token, so a question that
arrives while a chunk is being encoded waits for that chunk (and whatever was already
queued), never for a stream of chunks.

``FrameQueue`` is the bounded buffer between a frame source and a session's encoder
thread; when it is full it drops the oldest or the newest frame, and counts it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ..errors import ConfigError
from ..registry import QUEUE_POLICIES as QUEUE_POLICY_REGISTRY


class FairLock:
    """A non-reentrant lock that grants waiters in arrival order (ticket lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self.acquisitions = 0  # how many times it was granted (for tests and stats)

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._cond.wait()
            self.acquisitions += 1

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


QUEUE_POLICIES = ("drop_oldest", "drop_newest")
# what each policy drops, by name (``MemoryConfig.queue_policy``); ``FrameQueue`` applies them
QUEUE_POLICY_REGISTRY.add("drop_oldest", "the oldest waiting frame: keep up with the live edge")
QUEUE_POLICY_REGISTRY.add("drop_newest", "the frame that arrives: keep the frames already waiting")


class FrameQueue:
    """A bounded FIFO of frames. ``put`` never blocks: when full, a frame is dropped by policy."""

    def __init__(self, capacity: int, when_full: str = "drop_oldest"):
        if capacity < 1:
            raise ConfigError(f"queue capacity must be >= 1 frame, got {capacity}")
        if when_full not in QUEUE_POLICIES:
            raise ConfigError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}; got {when_full!r}")
        self.capacity = capacity
        self.when_full = when_full
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # the consumer holds an item it has not finished
        self.accepted = 0
        self.dropped = 0

    def put(self, item) -> bool:
        """Queue ``item``; returns False when it was dropped (queue full, ``drop_newest``)."""
        with self._cond:
            if self._closed:
                raise ConfigError("the frame queue is closed; start a new session to stream more")
            if len(self._items) >= self.capacity:
                self.dropped += 1
                if self.when_full == "drop_newest":
                    return False
                self._items.popleft()
            self._items.append(item)
            self.accepted += 1
            self._cond.notify_all()
            return True

    def get(self):
        """The next item, waiting for one; ``None`` once closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            self._busy = True
            return self._items.popleft()

    def done(self) -> None:
        """The consumer finished the item it took last."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued item has been consumed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)
