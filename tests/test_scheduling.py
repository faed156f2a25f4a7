"""Fair device lock and bounded frame queue."""

from __future__ import annotations

import threading
import time

import pytest

from streamvlm.errors import ConfigError
from streamvlm.runtime.scheduling import FairLock, FrameQueue


def test_fair_lock_grants_in_arrival_order():
    lock = FairLock()
    order: list[int] = []
    lock.acquire()  # hold it while the waiters line up
    threads = []
    for i in range(6):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        while lock._next_ticket < i + 2:  # wait until thread i holds its ticket
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == list(range(6))
    assert lock.acquisitions == 7


@pytest.mark.parametrize("policy, kept", [("drop_oldest", [6, 7, 8, 9]), ("drop_newest", [0, 1, 2, 3])])
def test_frame_queue_drops_by_policy_and_counts(policy, kept):
    q = FrameQueue(4, policy)
    results = [q.put(i) for i in range(10)]
    assert q.dropped == 6 and len(q) == 4
    assert results == ([True] * 10 if policy == "drop_oldest" else [True] * 4 + [False] * 6)
    q.close()
    got = []
    while (item := q.get()) is not None:
        got.append(item)
        q.done()
    assert got == kept
    assert q.join(0.1)


def test_frame_queue_rejects_bad_options_and_closed_puts():
    with pytest.raises(ConfigError, match="capacity"):
        FrameQueue(0)
    with pytest.raises(ConfigError, match="policy"):
        FrameQueue(2, "drop_random")
    q = FrameQueue(2)
    q.close()
    with pytest.raises(ConfigError, match="closed"):
        q.put(1)


# --------------------------------------------------------------------------- sessions

import numpy as np  # noqa: E402

from streamvlm import InvalidFrameError, MemoryConfig, StreamVLM  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


def frame(i: int) -> np.ndarray:
    return np.full((56, 56, 3), (i * 37) % 256, np.uint8)


def test_every_pushed_frame_is_encoded_or_counted_as_dropped(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, queue_frames=6))
    results = [session.push_frame(frame(i), float(i)) for i in range(300)]
    assert session.drain(60)
    stats = session.stats()
    assert all(results)  # drop_oldest: the new frame always gets in
    assert stats.frames_seen + stats.frames_dropped == 300
    assert stats.frames_dropped > 0 and stats.queue_depth == 0
    assert session.background_errors == []
    session.close()
    assert session.stats().frames_encoded == stats.frames_seen


def test_drop_newest_refuses_frames_when_full(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, queue_frames=2, queue_policy="drop_newest"))
    results = [session.push_frame(frame(i), float(i)) for i in range(100)]
    session.drain(60)
    stats = session.stats()
    assert results.count(False) == stats.frames_dropped > 0
    assert stats.frames_seen == results.count(True)
    session.close()


def test_bad_frames_are_refused_in_the_callers_thread(engine):
    session = engine.new_session()
    session.push_frame(frame(0), 5.0)
    with pytest.raises(InvalidFrameError):
        session.push_frame(frame(1), 4.0)  # earlier than the last pushed frame
    with pytest.raises(InvalidFrameError):
        session.push_frame(np.zeros((8, 8)), 6.0)
    session.close()


def test_a_question_waits_for_at_most_one_chunk_while_frames_flow(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, queue_frames=1000))
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set() and i < 3000:
            session.push_frame(frame(i), float(i))
            i += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        while session.stats().blocks < 5:
            time.sleep(0.01)
        waits = []
        for _ in range(5):
            with engine.device_lock:  # the encoder thread is now queued behind us, or busy elsewhere
                before = session.stats().blocks
            # wait=False: over what is encoded, not every frame pushed (that is the barrier's test)
            answer = session.ask("what is on screen?", max_new_tokens=2, wait=False)
            stored = [b for b in answer.blocks if b.tier != "pending"]
            waits.append(len(stored) - before)  # lossless: the answer attends every block it saw
        assert all(0 <= w <= 1 for w in waits), waits
        assert session.stats().blocks > before  # encoding went on between and after the questions
    finally:
        stop.set()
        feeder.join()
        session.close()
