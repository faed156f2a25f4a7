"""Sharing one device between encoding and answering, and bounding what waits for it.

``PriorityLock`` (the engine's ``device_lock``) serves model work in two classes. Answer
work (a question's prefill and each decoded token) is what a person is waiting for;
encode work (one chunk of a session's stream) has a frame queue in front of it to absorb
a delay. So waiting answer work is granted first, then chunks that a waiting question
needs (their frames were sent before the question), then other chunks: a question waits
for the chunk being encoded and its own session's, not for every session's queued chunk.
``FairLock`` is the same lock first come, first served for all: what the engine did
before, kept for comparison (``bench serve --lock fifo``).

``FrameQueue`` is the bounded buffer between a frame source and a session's encoder
thread; when it is full it drops the oldest or the newest frame, and counts it. A
``Fence`` put in it marks where a question was asked: the consumer reaches it once every
frame put before it is consumed or dropped, which is what a question waits for.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..registry import QUEUE_POLICIES as QUEUE_POLICY_REGISTRY

ANSWER = "answer"  # short work someone waits for: a question's prefill, one decoded token
ENCODE = "encode"  # stream work a frame queue buffers: a chunk, a checkpoint; ``with lock:``
WORK_CLASSES = (ANSWER, ENCODE)
ANSWER_RANK, AWAITED_RANK, ENCODE_RANK = 0, 1, 2  # who goes first: the lowest rank waiting
# Grants that may overtake the oldest waiter before it goes. An answer of up to this many
# tokens is decoded without a chunk between its tokens, and while answers keep coming an
# encoder still gets at least one grant in MAX_PASSED_OVER + 1 (``PriorityLock``).
MAX_PASSED_OVER = 16


class PriorityLock:
    """A non-reentrant device lock: the most urgent work first, otherwise arrival order.

    ``acquire(work, awaited)`` takes a ticket. Waiters rank, most urgent first: answer
    work (``ANSWER``: a started answer finishes before more is started); encode work whose
    ``awaited()`` says, when the lock is granted, that a question waits for it (a session's
    chunk of frames sent before a question); other encode work. When the lock is free it
    is granted to:

    1. the oldest waiter, if ``max_passed_over`` grants have overtaken it (no starvation:
       counting grants, not time, so the bound holds however long each hold takes, and
       needs no clock);
    2. else the oldest waiter of the most urgent rank waiting, when ``answers_first``;
    3. else the oldest waiter (``answers_first=False``: plain FIFO, ``FairLock``).

    So each rank is served in arrival order. A grant is made to one ticket at a time, so a
    thread arriving when the lock is free never overtakes one already chosen. ``with
    lock:`` holds it as encode work; ``with lock.for_answer():`` as answer work, ``with
    lock.for_encoding(awaited):`` as encode work a question may wait for.
    """

    def __init__(self, answers_first: bool = True, max_passed_over: int = MAX_PASSED_OVER):
        if max_passed_over < 1:
            raise ConfigError(f"max_passed_over must be >= 1 grant, got {max_passed_over}")
        self.answers_first = answers_first
        self.max_passed_over = max_passed_over
        self._cond = threading.Condition(threading.Lock())
        self._waiters: dict[int, _Waiter] = {}  # by ticket, in arrival order
        self._next_ticket = 0  # tickets handed out: holds asked for
        self._serving = 0  # holds released; ``_next_ticket - _serving`` = holder and waiters
        self._granted: int | None = None  # the ticket chosen to hold the lock next
        self._held = False
        self._passed_over = 0  # grants in a row that overtook the oldest waiter
        self.acquisitions = 0  # how many times it was granted (for tests and stats)
        self.grants = dict.fromkeys(WORK_CLASSES, 0)  # the same, per class
        self.awaited_grants = 0  # encode grants while a question waited for them
        self._answer = _Hold(self, ANSWER, None)
        self._encode = _Hold(self, ENCODE, None)

    def acquire(self, work: str = ENCODE, awaited: Callable[[], bool] | None = None) -> None:
        """Wait until this thread holds the lock as ``work`` (``ANSWER`` or ``ENCODE``);
        ``awaited`` (encode work) says whether a question waits for it now. It is called
        with the lock's own mutex held: it must be quick and must not take this lock."""
        if work not in WORK_CLASSES:
            raise ConfigError(f"device lock work must be one of {', '.join(WORK_CLASSES)}; got {work!r}")
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiters[ticket] = _Waiter(work, awaited)
            self._grant_next()
            while self._granted != ticket:
                self._cond.wait()
            waiter = self._waiters.pop(ticket)
            self._granted, self._held = None, True
            self.acquisitions += 1
            self.grants[work] += 1
            self.awaited_grants += waiter.granted_awaited

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._serving += 1
            self._grant_next()

    def for_answer(self) -> _Hold:
        """A context manager holding the lock as answer work (prefill, a token, a stats read)."""
        return self._answer

    def for_encoding(self, awaited: Callable[[], bool] | None = None) -> _Hold:
        """A context manager holding the lock as encode work (``with lock:``), urgent while
        ``awaited()`` says a question waits for it."""
        return self._encode if awaited is None else _Hold(self, ENCODE, awaited)

    @property
    def waiting(self) -> dict[str, int]:
        """Threads waiting for the lock, per class."""
        with self._cond:
            counts = dict.fromkeys(WORK_CLASSES, 0)
            for waiter in self._waiters.values():
                counts[waiter.work] += 1
            return counts

    def _grant_next(self) -> None:
        """Choose the next holder if the lock is free and nobody is chosen (caller holds ``_cond``)."""
        if self._held or self._granted is not None or not self._waiters:
            return
        oldest = next(iter(self._waiters))
        ticket, rank = oldest, None
        if self.answers_first and self._passed_over < self.max_passed_over:
            ticket, rank = self._most_urgent()
        self._passed_over = self._passed_over + 1 if ticket != oldest else 0
        self._waiters[ticket].granted_awaited = rank == AWAITED_RANK
        self._granted = ticket
        self._cond.notify_all()

    def _most_urgent(self) -> tuple[int, int]:
        """The oldest waiter of the lowest rank, and its rank (caller holds ``_cond``)."""
        best = best_rank = None
        for ticket, waiter in self._waiters.items():  # arrival order
            rank = waiter.rank()
            if best_rank is None or rank < best_rank:
                best, best_rank = ticket, rank
                if rank == ANSWER_RANK:
                    break  # nothing ranks lower: the rest need not be asked
        return best, best_rank

    def __enter__(self) -> PriorityLock:
        self.acquire(ENCODE)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class FairLock(PriorityLock):
    """The device lock first come, first served for answers and encoders alike (a ticket
    lock): what the engine used before answers had priority, kept to measure against."""

    def __init__(self) -> None:
        super().__init__(answers_first=False)


# the device locks by the name ``bench serve --lock`` takes
DEVICE_LOCKS = {"priority": PriorityLock, "fifo": FairLock}


class _Waiter:
    """A thread waiting for a ``PriorityLock``: its class, and whether a question awaits it."""

    __slots__ = ("work", "awaited", "granted_awaited")

    def __init__(self, work: str, awaited: Callable[[], bool] | None):
        self.work = work
        self.awaited = awaited
        self.granted_awaited = False

    def rank(self) -> int:
        """``ANSWER_RANK``, ``AWAITED_RANK`` or ``ENCODE_RANK``, as of now."""
        if self.work == ANSWER:
            return ANSWER_RANK
        return AWAITED_RANK if self.awaited is not None and self.awaited() else ENCODE_RANK


class _Hold:
    """``with``: hold a ``PriorityLock`` as one class of work."""

    def __init__(self, lock: PriorityLock, work: str, awaited: Callable[[], bool] | None):
        self._lock = lock
        self._work = work
        self._awaited = awaited

    def __enter__(self) -> PriorityLock:
        self._lock.acquire(self._work, self._awaited)
        return self._lock

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


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
        self._fences = 0  # fences in ``_items``: questions waiting for frames put before them
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
            self._fences += 1
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
            if isinstance(item, Fence):
                self._fences -= 1
            else:
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
    def awaited(self) -> bool:
        """A question waits for frames taken or queued before its fence: what the consumer
        encodes now is on a question's path (the session's chunks go as urgent work)."""
        with self._cond:
            return self._fences > 0

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
