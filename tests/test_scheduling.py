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
