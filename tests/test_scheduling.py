"""The device lock (answers first, FIFO within a class, no starved encoder) and the bounded frame queue."""

from __future__ import annotations

import threading
import time

import pytest

from streamvlm.errors import ConfigError
from streamvlm.runtime.scheduling import ANSWER, ENCODE, FairLock, FrameQueue, PriorityLock


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


def grant_order(lock: PriorityLock, arrivals: list[tuple]) -> list[str]:
    """The order ``lock`` grants waiters that queue as ``arrivals`` ``(label, work[, awaited])``,
    in that order, while the test holds it; each holds it only to note its label."""
    order: list[str] = []

    def take(label: str, work: str, awaited=None) -> None:
        with lock.for_answer() if work == ANSWER else lock.for_encoding(awaited):
            order.append(label)

    lock.acquire()
    threads = []
    for i, arrival in enumerate(arrivals):
        threads.append(threading.Thread(target=take, args=arrival))
        threads[-1].start()
        while sum(lock.waiting.values()) < i + 1:  # queued before the next one arrives
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    return order


def test_an_answer_behind_queued_encoders_is_granted_next():
    lock = PriorityLock()
    arrivals = [(f"e{i}", ENCODE) for i in range(5)] + [("a0", ANSWER)]
    assert grant_order(lock, arrivals) == ["a0", "e0", "e1", "e2", "e3", "e4"]
    assert lock.grants == {ANSWER: 1, ENCODE: 6}  # the test's own hold is encode work


def test_each_class_is_served_in_arrival_order():
    lock = PriorityLock()
    arrivals = [
        ("e0", ENCODE),
        ("a0", ANSWER),
        ("e1", ENCODE),
        ("a1", ANSWER),
        ("a2", ANSWER),
        ("e2", ENCODE),
    ]
    assert grant_order(lock, arrivals) == ["a0", "a1", "a2", "e0", "e1", "e2"]


def test_encoders_are_not_starved_by_a_stream_of_answers():
    lock = PriorityLock(max_passed_over=4)
    arrivals = [(f"e{i}", ENCODE) for i in range(3)] + [(f"a{i}", ANSWER) for i in range(14)]
    order = grant_order(lock, arrivals)
    # four answers overtake the oldest encoder, then it goes; then the next one's turn
    assert order == [
        *("a0", "a1", "a2", "a3", "e0"),
        *("a4", "a5", "a6", "a7", "e1"),
        *("a8", "a9", "a10", "a11", "e2"),
        *("a12", "a13"),
    ]


def test_a_chunk_a_question_awaits_goes_with_the_answers():
    lock = PriorityLock()
    question_waits = threading.Event()
    arrivals = [("e0", ENCODE), ("e1", ENCODE, question_waits.is_set), ("a0", ANSWER), ("e2", ENCODE)]
    question_waits.set()  # asked after the chunk queued: what counts is when the lock is granted
    assert grant_order(lock, arrivals) == ["a0", "e1", "e0", "e2"]  # after answers, before the rest
    assert lock.awaited_grants == 1 and lock.grants == {ANSWER: 1, ENCODE: 4}


def test_fair_lock_serves_answers_and_encoders_alike_in_arrival_order():
    arrivals = [("e0", ENCODE), ("a0", ANSWER), ("e1", ENCODE), ("a1", ANSWER)]
    assert grant_order(FairLock(), arrivals) == ["e0", "a0", "e1", "a1"]


def test_the_device_lock_names_its_mistakes():
    with pytest.raises(ConfigError, match="answer, encode"):
        PriorityLock().acquire("decode")
    with pytest.raises(ConfigError, match="max_passed_over"):
        PriorityLock(max_passed_over=0)


def test_a_frame_queue_is_awaited_while_a_fence_waits_in_it():
    q = FrameQueue(4)
    q.put(0)
    assert not q.awaited
    fence = q.put_fence()
    q.put(1)
    assert q.awaited and q.get() == 0  # the frame a question waits for is being encoded
    assert q.awaited
    q.done()
    assert q.get() is fence and not q.awaited


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


def test_a_question_holds_the_device_as_answer_work(engine):
    session = engine.new_session(memory=MemoryConfig(window=4))
    for i in range(5):  # two chunks and a pending frame
        session.add_frame(frame(i), float(i))
    lock = engine.device_lock
    before = dict(lock.grants)
    answer = session.ask("what is on screen?", max_new_tokens=3)
    n = answer.timings.new_tokens
    forwards = n if answer.finish_reason == "stop" else n - 1  # no forward after the last token
    assert lock.grants[ANSWER] - before[ANSWER] == 1 + forwards  # the prefill, then one per token
    assert lock.grants[ENCODE] == before[ENCODE]  # the pending frame is encoded as answer work
    session.close()


def test_a_sessions_chunk_goes_as_urgent_work_while_a_question_waits_for_it(engine):
    session = engine.new_session(memory=MemoryConfig(window=4))
    lock = engine.device_lock
    before = lock.awaited_grants
    with lock:  # the encoder stalls at its first chunk, then a question waits for it
        for i in range(2):
            session.push_frame(frame(i), float(i))
        while lock.waiting[ENCODE] < 1:
            time.sleep(0.001)
        stream = session.ask_stream("what is on screen?", max_new_tokens=2)
        answering = threading.Thread(target=lambda: "".join(stream))
        answering.start()
    answering.join(30)
    assert lock.awaited_grants == before + 1 and stream.answer is not None
    for i in range(2, 6):  # no question waits: the chunks are plain encode work
        session.push_frame(frame(i), float(i))
    assert session.drain(30) and lock.awaited_grants == before + 1
    session.close()
