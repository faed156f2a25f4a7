"""Sharing one device between encoding and answering, and bounding what waits for it.

``FairLock`` serves model work first come, first served. The encoder takes it once per
chunk and the answer path once for its prefill and once per token, so a question that
arrives while a chunk is being encoded waits for that chunk (and whatever was already
queued), never for a stream of chunks.

``FrameQueue`` is the bounded buffer between a frame source and a session's encoder
thread; when it is full it drops the oldest or the newest frame, and counts it. A
``Fence`` put in it marks where a question was asked: the consumer reaches it once every
frame put before it is consumed or dropped, which is what a question waits for.
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


class Fence:
    """A point in a ``FrameQueue``'s order: every frame put before it, none put after.

    The queue's consumer calls ``reach`` when it takes the fence, that is once every
    earlier frame is consumed or dropped; a waiter (a question) blocks in ``wait``.
    """

    def __init__(self, dropped: int):
        # frames put before the fence that the queue dropped (full queue), over its life;
        # the queue counts the ones it drops while the fence waits
        self.dropped = dropped
        self.clock: int | None = None  # what the consumer says it had done when it got here
        self._reached = threading.Event()

    def reach(self, clock: int) -> None:
        """The consumer got here; ``clock`` is its count of frames taken so far."""
        self.clock = clock
        self._reached.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait until the consumer reaches the fence; False after ``timeout`` seconds."""
        return self._reached.wait(timeout)


class FrameQueue:
    """A bounded FIFO of frames (and fences). ``put`` never blocks: when full, a frame is
    dropped by policy. Fences take no room: ``capacity`` and ``len`` count frames."""

    def __init__(self, capacity: int, when_full: str = "drop_oldest"):
        if capacity < 1:
            raise ConfigError(f"queue capacity must be >= 1 frame, got {capacity}")
        if when_full not in QUEUE_POLICIES:
            raise ConfigError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}; got {when_full!r}")
        self.capacity = capacity
        self.when_full = when_full
        self._items: deque = deque()  # frames and fences, in the order they were put
        self._frames = 0  # frames in ``_items``
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
            if self._frames >= self.capacity:
                self.dropped += 1
                if self.when_full == "drop_newest":
                    return False  # after every waiting fence: none of them counts it
                self._drop_oldest_frame()
            self._items.append(item)
            self._frames += 1
            self.accepted += 1
            self._cond.notify_all()
            return True

    def _drop_oldest_frame(self) -> None:
        """Remove the oldest waiting frame; the fences behind it count it as theirs."""
        index = next(i for i, item in enumerate(self._items) if not isinstance(item, Fence))
        del self._items[index]
        self._frames -= 1
        for later in list(self._items)[index:]:
            if isinstance(later, Fence):
                later.dropped += 1

    def put_fence(self) -> Fence | None:
        """Mark this point of the queue; ``None`` when the queue is closed and its consumer
        has taken everything (nothing put before now is still in flight)."""
        with self._cond:
            if self._closed and not self._items and not self._busy:
                return None
            fence = Fence(self.dropped)
            self._items.append(fence)
            self._cond.notify_all()
            return fence

    def get(self):
        """The next item, waiting for one; ``None`` once closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            self._busy = True
            item = self._items.popleft()
            if not isinstance(item, Fence):
                self._frames -= 1
            return item

    def done(self) -> None:
        """The consumer finished the item it took last."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued item has been consumed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    @property
    def idle(self) -> bool:
        """Nothing waits and the consumer holds nothing: it has caught up with every put."""
        with self._cond:
            return not self._items and not self._busy

    def close(self) -> None:
        """Refuse further frames; the consumer still gets what waits, then ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Frames waiting (fences are not counted)."""
        return self._frames
