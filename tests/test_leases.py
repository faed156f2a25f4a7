"""The session directory and its leases (``streamvlm.cluster.leases``) on a real
``redis-server``: registration, takeovers with fencing tokens, expiry on the server's
clock, racing replicas, the lease keeper, and the errors when Redis is not there."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("redis")
from _redis_server import free_port, running_redis  # noqa: E402

from streamvlm.cluster.leases import (  # noqa: E402
    Lease,
    LeaseKeeper,
    NoSuchSessionError,
    RegistryUnavailableError,
    SessionDirectory,
    token_hash,
)
from streamvlm.errors import ConfigError, StreamVLMError  # noqa: E402

TOKEN = "bearer-secret-7f3a"
# the fixtures redis_server (one per module) and redis_url (emptied for each test)
pytest_plugins = ["_redis_server"]

RECORD = {"model": "tiny-qwen2.5-vl", "fps": 2.0, "memory": {"top_k": 4}}


@pytest.fixture
def directory(redis_url):
    with SessionDirectory(redis_url, lease_s=30.0) as d:
        yield d


def test_create_registers_the_session_with_its_first_lease(directory):
    lease = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    assert lease == Lease("s1", "replica-a", 1)
    entry = directory.lookup("s1")
    assert entry.session_id == "s1"
    assert entry.token_hash == token_hash(TOKEN)
    assert entry.record == RECORD
    assert (entry.owner, entry.fence, entry.manifest_version) == ("replica-a", 1, None)
    assert entry.lease_alive
    assert entry.lease_expires_at == pytest.approx(entry.created_at + 30.0, abs=1e-3)
    assert directory.ids() == ["s1"]
    assert directory.lookup("unknown") is None


def test_a_duplicate_id_is_refused_and_leaves_the_entry_alone(directory):
    directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    assert directory.create("s1", token_hash("other"), {"x": 1}, "replica-b") is None
    entry = directory.lookup("s1")
    assert (entry.token_hash, entry.record, entry.owner, entry.fence) == (
        token_hash(TOKEN),
        RECORD,
        "replica-a",
        1,
    )


def test_acquire_takes_the_lease_with_the_next_fence(directory):
    directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    assert directory.acquire("s1", "replica-b") == Lease("s1", "replica-b", 2)
    assert directory.acquire("s1", "replica-a") == Lease("s1", "replica-a", 3)
    # taking a lease one already holds still moves the fence: every takeover is a new lease
    assert directory.acquire("s1", "replica-a") == Lease("s1", "replica-a", 4)
    entry = directory.lookup("s1")
    assert (entry.owner, entry.fence) == ("replica-a", 4)


def test_acquire_of_an_unknown_session_raises_a_key_error(directory):
    with pytest.raises(NoSuchSessionError) as caught:
        directory.acquire("ghost", "replica-a")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StreamVLMError)
    assert str(caught.value) == "session 'ghost' is not in the directory: create it first"


def test_after_a_takeover_the_old_lease_can_do_nothing(directory):
    old = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    assert directory.record_manifest(old, 5)
    new = directory.acquire("s1", "replica-b")

    assert not directory.holds(old)
    assert not directory.renew(old)
    assert not directory.record_manifest(old, 6)
    assert not directory.release(old)
    assert not directory.delete("s1", old)
    entry = directory.lookup("s1")
    assert (entry.owner, entry.fence, entry.manifest_version) == ("replica-b", 2, 5)

    assert directory.holds(new) and directory.renew(new)
    assert directory.record_manifest(new, 6)
    assert directory.lookup("s1").manifest_version == 6


def test_a_same_owner_lease_with_an_older_fence_is_not_held(directory):
    # a replica restarted under the same id must not write with its previous life's lease
    first = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    second = directory.acquire("s1", "replica-a")
    assert not directory.holds(first) and not directory.record_manifest(first, 1)
    assert directory.holds(second)


def test_release_leaves_the_session_registered_without_an_owner(directory):
    lease = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    assert directory.release(lease)
    entry = directory.lookup("s1")
    assert (entry.owner, entry.fence) == (None, 1)
    assert not entry.lease_alive and 0 <= entry.unheld_s < 1  # the lease ended at the release
    assert not directory.holds(lease) and not directory.renew(lease) and not directory.release(lease)
    assert directory.ids() == ["s1"]
    assert directory.acquire("s1", "replica-b").fence == 2


def test_delete_by_the_holder_or_unconditionally(directory):
    lease = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    directory.create("s2", token_hash(TOKEN), RECORD, "replica-a")
    with pytest.raises(ValueError):
        directory.delete("s2", lease)
    assert directory.delete("s1", lease)
    assert directory.lookup("s1") is None and directory.ids() == ["s2"]
    assert not directory.delete("s1", lease) and not directory.delete("s1")
    with pytest.raises(ConfigError, match="lease_s"):
        SessionDirectory(directory.url, lease_s=0)
    assert directory.delete("s2")  # an operator's delete, whoever holds it
    assert directory.ids() == []


def test_the_fence_keeps_growing_across_delete_and_re_create(directory):
    directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    stale = directory.acquire("s1", "replica-b")
    assert directory.delete("s1")
    again = directory.create("s1", token_hash(TOKEN), RECORD, "replica-c")
    assert again.fence == 3
    assert not directory.holds(stale) and not directory.record_manifest(stale, 1)


def test_ids_and_owned_by(directory):
    for session_id, owner in [("s3", "replica-b"), ("s1", "replica-a"), ("s2", "replica-a")]:
        directory.create(session_id, token_hash(TOKEN), RECORD, owner)
    directory.release(directory.acquire("s3", "replica-a"))
    directory.acquire("s2", "replica-b")
    assert directory.ids() == ["s1", "s2", "s3"]
    assert directory.owned_by("replica-a") == ["s1"]
    assert directory.owned_by("replica-b") == ["s2"]
    assert directory.owned_by("replica-c") == []


def test_namespaces_do_not_see_each_other(redis_url):
    with (
        SessionDirectory(redis_url, namespace="one") as one,
        SessionDirectory(redis_url, namespace="two") as two,
    ):
        assert one.create("s1", token_hash(TOKEN), {"n": 1}, "replica-a").fence == 1
        assert two.create("s1", token_hash(TOKEN), {"n": 2}, "replica-a").fence == 1
        assert one.acquire("s1", "replica-b").fence == 2
        assert two.lookup("s1").record == {"n": 2} and two.lookup("s1").fence == 1


def test_racing_acquires_get_distinct_fences_and_one_holder(redis_url):
    threads, rounds = 8, 25
    with SessionDirectory(redis_url) as setup:
        setup.create("s1", token_hash(TOKEN), RECORD, "creator")
    start = threading.Barrier(threads)
    taken: list[list[Lease]] = [[] for _ in range(threads)]

    def race(i: int) -> None:
        with SessionDirectory(redis_url) as d:  # one connection per replica, as in a cluster
            start.wait()
            for _ in range(rounds):
                taken[i].append(d.acquire("s1", f"replica-{i}"))

    workers = [threading.Thread(target=race, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    fences = sorted(lease.fence for leases in taken for lease in leases)
    assert fences == list(range(2, 2 + threads * rounds))
    with SessionDirectory(redis_url) as d:
        last = [leases[-1] for leases in taken]
        holders = [lease for lease in last if d.holds(lease)]
        assert holders == [max(last, key=lambda lease: lease.fence)]
        entry = d.lookup("s1")
        assert (entry.owner, entry.fence) == (holders[0].owner, 1 + threads * rounds)


def test_racing_creates_of_one_id_register_it_once(redis_url):
    threads = 8
    start = threading.Barrier(threads)
    results: list[Lease | None] = [None] * threads

    def race(i: int) -> None:
        with SessionDirectory(redis_url) as d:
            start.wait()
            results[i] = d.create("s1", token_hash(TOKEN), {"by": i}, f"replica-{i}")

    workers = [threading.Thread(target=race, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1 and winners[0].fence == 1
    with SessionDirectory(redis_url) as d:
        assert d.lookup("s1").record == {"by": int(winners[0].owner.split("-")[1])}


def test_an_expired_lease_still_names_its_owner_until_taken(redis_url):
    # a lease lasts as long as the renewing directory's lease_s: short ones to see them
    # expire, long ones to see them alive however slow the machine
    with SessionDirectory(redis_url, lease_s=0.2) as short, SessionDirectory(redis_url, lease_s=30) as long:
        lease = short.create("s1", token_hash(TOKEN), RECORD, "replica-a")
        time.sleep(0.4)
        entry = short.lookup("s1")
        assert not entry.lease_alive
        assert (entry.owner, entry.fence) == ("replica-a", 1)
        assert entry.checked_at > entry.lease_expires_at
        # nobody took it: its owner carries on
        assert short.holds(lease) and long.renew(lease)
        assert short.lookup("s1").lease_alive
        assert short.renew(lease)
        time.sleep(0.4)
        assert not short.lookup("s1").lease_alive
        # expired or not, acquire takes it
        assert long.acquire("s1", "replica-b").fence == 2
        assert long.lookup("s1").lease_alive and not long.renew(lease)


def test_keeper_renew_once_reports_each_lost_lease_once(directory):
    kept = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    taken = directory.create("s2", token_hash(TOKEN), RECORD, "replica-a")
    released = directory.create("s3", token_hash(TOKEN), RECORD, "replica-a")
    deleted = directory.create("s4", token_hash(TOKEN), RECORD, "replica-a")
    lost = []
    keeper = LeaseKeeper(directory, lost.append)
    for lease in (kept, taken, released, deleted):
        keeper.add(lease)
    before = directory.lookup("s1").lease_expires_at

    directory.acquire("s2", "replica-b")
    directory.release(released)
    directory.delete("s4")
    assert sorted(lease.session_id for lease in keeper.renew_once()) == ["s2", "s3", "s4"]
    assert sorted(lost, key=lambda lease: lease.session_id) == [taken, released, deleted]
    assert keeper.renew_once() == [] and len(lost) == 3
    assert keeper.leases() == [kept]
    assert directory.lookup("s1").lease_expires_at > before


def test_keeper_does_not_report_a_lease_replaced_by_a_newer_one_of_its_own(directory):
    old = directory.create("s1", token_hash(TOKEN), RECORD, "replica-a")
    lost = []
    keeper = LeaseKeeper(directory, lost.append)
    keeper.add(old)
    keeper.add(directory.acquire("s1", "replica-a"))  # e.g. the session re-attached here
    assert keeper.renew_once() == [] and lost == []
    assert keeper.remove("s1").fence == 2 and keeper.leases() == []


def test_keeper_thread_renews_and_reports_a_takeover(redis_url):
    with SessionDirectory(redis_url, lease_s=0.6) as d:
        lease = d.create("s1", token_hash(TOKEN), RECORD, "replica-a")
        first_expiry = d.lookup("s1").lease_expires_at
        lost = []
        reported = threading.Event()

        def on_lost(gone: Lease) -> None:
            lost.append(gone)
            reported.set()

        with LeaseKeeper(d, on_lost) as keeper:
            assert keeper.interval_s == pytest.approx(0.2)
            keeper.add(lease)
            deadline = time.monotonic() + 10
            while d.lookup("s1").lease_expires_at <= first_expiry:
                assert time.monotonic() < deadline, "the keeper never renewed the lease"
                time.sleep(0.05)
            d.acquire("s1", "replica-b")
            assert reported.wait(timeout=10), "the keeper did not report the taken lease"
            # several more passes, nothing more to report
            passes_later = d.lookup("s1").checked_at + 3 * keeper.interval_s
            while d.lookup("s1").checked_at < passes_later:
                time.sleep(0.05)
        assert lost == [lease] and keeper.leases() == []


def test_token_hash_keeps_the_token_out_of_redis(redis_url):
    import redis

    assert token_hash(TOKEN) == token_hash(TOKEN) != token_hash(TOKEN + "x")
    assert len(token_hash(TOKEN)) == 64 and TOKEN not in token_hash(TOKEN)
    with SessionDirectory(redis_url) as d:
        with pytest.raises(ValueError, match="never the token"):
            d.create("s0", TOKEN, RECORD, "replica-a")
        d.create("s1", token_hash(TOKEN), RECORD, "replica-a")
        d.record_manifest(d.acquire("s1", "replica-b"), 1)
    stored = []
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        for key in client.keys("*"):
            kind = client.type(key)
            value = {"hash": client.hgetall, "string": client.get, "set": client.smembers}[kind](key)
            stored.append(f"{key}={value}")
    assert len(stored) == 3  # the session hash, its fence counter, the id set
    assert all(TOKEN not in text for text in stored)
    assert any(token_hash(TOKEN) in text for text in stored)


def test_an_unreachable_directory_fails_fast_with_one_line():
    # a port that listens with its accept queue full drops new SYNs, like an address that
    # black-holes them: only the connect timeout ends the wait
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    queued = socket.create_connection(silent.getsockname())
    try:
        for url, expected in [
            (f"redis://127.0.0.1:{free_port()}/0", "unreachable"),  # refused
            (f"redis://127.0.0.1:{silent.getsockname()[1]}/0", "unreachable"),  # no answer
            ("http://127.0.0.1:6379/0", "not valid"),
        ]:
            began = time.monotonic()
            with pytest.raises(RegistryUnavailableError) as caught:
                SessionDirectory(url)
            assert time.monotonic() - began < 2.0
            message = str(caught.value)
            assert "\n" not in message and url in message and expected in message
    finally:
        queued.close()
        silent.close()


def test_a_directory_whose_redis_dies_raises_and_the_keeper_keeps_its_leases(tmp_path):
    lost = []
    with running_redis(tmp_path) as server:
        d = SessionDirectory(server.url)
        lease = d.create("s1", token_hash(TOKEN), RECORD, "replica-a")
        keeper = LeaseKeeper(d, lost.append)
        keeper.add(lease)
        server.stop()
        for call in (lambda: d.renew(lease), lambda: d.lookup("s1"), d.ids, lambda: d.owned_by("replica-a")):
            with pytest.raises(RegistryUnavailableError, match=f"{server.url} unreachable"):
                call()
        assert keeper.renew_once() == [] and lost == [] and keeper.leases() == [lease]
        d.close()
