"""The shared long-term tier: object stores (a shared directory, S3 through moto's real
server on loopback) and session directories mirrored to them with fencing.

Every test runs against both backends. Sessions are real: the bundled trained
``streamvlm-tiny-synth`` watches ``assets/shapes.mp4`` at 1 fps and answers 7 to DIAMOND.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _s3_server import new_bucket_url

from streamvlm import StreamVLM
from streamvlm.errors import ConfigError
from streamvlm.memory.mirror import (
    FencedError,
    NoSuchSessionError,
    RestoreTargetError,
    SessionMirror,
    delete_session,
    latest_version,
    verify,
)
from streamvlm.memory.objectstore import ObjectNotFoundError, ObjectStore, ObjectStoreError, open_store
from streamvlm.runtime.session import Session

pytest_plugins = ["_s3_server"]

SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes.mp4"
DIAMOND = "What digit did the diamond show?"


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> ObjectStore:
    """An empty store: a directory, or a fresh bucket on the module's moto server."""
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    return open_store(new_bucket_url(request.getfixturevalue("s3_service")))


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained("streamvlm-tiny-synth")


def shapes_session(engine, directory: Path):
    """A session on disk that watched shapes.mp4 at 1 fps and made a checkpoint."""
    session = engine.new_session(memory=engine.memory(disk_dir=str(directory)))
    session.watch(SHAPES, fps=1)
    session.checkpoint()
    return session


def more_frames(session, n: int, t0: float) -> None:
    rng = np.random.default_rng(int(t0))
    session.add_frames((rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), t0 + i) for i in range(n))
    session.checkpoint()


def local_files(directory: Path) -> dict[str, bytes]:
    """What a session directory holds, but the per-process lock."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def object_keys(store: ObjectStore, session_id: str) -> set[str]:
    return set(store.list(f"sessions/{session_id}/objects/"))


def referenced(store: ObjectStore, session_id: str) -> set[str]:
    """Keys the kept manifests reference (read back from the store)."""
    import json

    keys = set()
    for key in store.list(f"sessions/{session_id}/manifests/"):
        for parts in json.loads(store.get(key))["files"].values():
            keys |= {f"sessions/{session_id}/{p['key']}" for p in parts}
    return keys


# ------------------------------------------------------------------ object stores


def test_put_get_list_delete(store):
    store.put("a/b/one", b"1")
    store.put("a/two", b"22")
    store.put("a/two", b"second")  # overwrite
    store.put("b", b"")
    assert store.get("a/b/one") == b"1" and store.get("a/two") == b"second" and store.get("b") == b""
    assert store.list("") == ["a/b/one", "a/two", "b"]
    assert store.list("a/") == ["a/b/one", "a/two"] and store.list("a/t") == ["a/two"]
    assert store.list("nothing/") == []
    store.delete(["a/b/one", "missing/key"])
    assert store.list("") == ["a/two", "b"]
    with pytest.raises(ObjectNotFoundError, match="no object 'a/b/one'"):
        store.get("a/b/one")
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        store.put("../escape", b"x")


def test_put_new_creates_only_once_and_racing_writers_have_one_winner(store):
    assert store.put_new("m/1", b"first") is True
    assert store.put_new("m/1", b"second") is False
    assert store.get("m/1") == b"first"
    for trial in range(20):
        winners, start = [], threading.Barrier(4)

        def write(i: int, key: str = f"race/{trial}", start=start, winners=winners) -> None:
            start.wait()
            if store.put_new(key, b"%d" % i):
                winners.append(i)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1, f"trial {trial}: winners {winners}"
        assert store.get(f"race/{trial}") == b"%d" % winners[0]
    assert store.list("race/") == sorted(f"race/{t}" for t in range(20))  # no temporary files listed


def test_a_bad_store_url_names_the_two_forms(tmp_path):
    for url in ("gs://bucket/x", "/plain/path", "file://relative/dir"):
        with pytest.raises(ConfigError, match="use file:///path or s3://bucket/prefix"):
            open_store(url)


# --------------------------------------------------------- publish and restore


def test_a_restored_session_answers_as_the_published_one(store, engine, tmp_path):
    session = shapes_session(engine, tmp_path / "a")
    before = session.ask(DIAMOND, max_new_tokens=4)
    assert before.text.strip() == "7"
    mirror = SessionMirror(store, "s1", fence=1, owner="replica-a")
    assert mirror.publish(tmp_path / "a") == 1 and latest_version(store, "s1") == 1
    stats = mirror.stats()
    assert stats["publishes"] == 1 and stats["manifest_version"] == 1
    assert stats["bytes_uploaded"] == sum(len(b) for b in local_files(tmp_path / "a").values())
    assert verify(store, "s1") == []

    restored = SessionMirror.restore(store, "s1", tmp_path / "b", fence=2, owner="replica-b")
    assert restored.version == 2 and latest_version(store, "s1") == 2  # the claim
    assert local_files(tmp_path / "b") == local_files(tmp_path / "a")
    session.close()
    resumed = Session.resume(tmp_path / "b", engine)
    after = resumed.ask(DIAMOND, max_new_tokens=4)
    assert after.text.strip() == "7" and after.token_ids == before.token_ids
    assert [b.id for b in after.blocks] == [b.id for b in before.blocks]
    resumed.close()


def test_publish_uploads_only_appended_segment_bytes_and_changed_files(store, engine, tmp_path):
    directory = tmp_path / "a"
    session = shapes_session(engine, directory)
    mirror = SessionMirror(store, "s1", fence=1, owner="a")
    mirror.publish(directory)
    first = local_files(directory)
    uploaded = mirror.stats()["bytes_uploaded"]
    for round_ in range(2):
        more_frames(session, 6, 100.0 + 10 * round_)
        now = local_files(directory)
        segment_growth = sum(
            len(b) - len(first.get(rel, b"")) for rel, b in now.items() if rel.endswith(".seg")
        )
        changed = sum(len(b) for rel, b in now.items() if not rel.endswith(".seg") and first.get(rel) != b)
        assert segment_growth > 0 and changed > 0
        mirror.publish(directory)
        new_bytes = mirror.stats()["bytes_uploaded"] - uploaded
        assert new_bytes == segment_growth + changed
        assert new_bytes < sum(len(b) for b in now.values()) / 2  # the first copy is not sent again
        first, uploaded = now, mirror.stats()["bytes_uploaded"]
    session.close()
    SessionMirror.restore(store, "s1", tmp_path / "b", fence=2, owner="b")
    assert local_files(tmp_path / "b") == local_files(directory)
    assert verify(store, "s1") == []


def test_a_segment_that_got_shorter_or_was_rewritten_is_uploaded_whole(store, tmp_path):
    directory = tmp_path / "d"
    segment = directory / "segments" / "00000001.seg"
    segment.parent.mkdir(parents=True)
    (directory / "session.json").write_text("{}")
    (directory / "lock").write_text("123")  # never mirrored
    (directory / "table.json.tmp").write_text("half")  # never mirrored
    segment.write_bytes(b"a" * 1000)
    mirror = SessionMirror(store, "s", fence=7, owner="w")
    mirror.publish(directory)
    assert mirror.stats()["bytes_uploaded"] == 1000 + 2
    with open(segment, "ab") as f:
        f.write(b"b" * 300)
    mirror.publish(directory)
    assert mirror.stats()["bytes_uploaded"] == 1302  # the 300 appended bytes only
    segment.write_bytes(b"a" * 900 + b"c" * 500)  # recovery truncated a torn tail, then appended past it
    mirror.publish(directory)
    assert mirror.stats()["bytes_uploaded"] == 1302 + 1400
    segment.write_bytes(b"a" * 900)  # truncated only
    mirror.publish(directory)
    assert mirror.stats()["bytes_uploaded"] == 2702 + 900
    with open(segment, "ab") as f:
        f.write(b"d" * 100)
    mirror.publish(directory)
    assert mirror.stats()["bytes_uploaded"] == 3602 + 100
    SessionMirror.restore(store, "s", tmp_path / "r", fence=8, owner="r")
    assert local_files(tmp_path / "r") == {
        "segments/00000001.seg": segment.read_bytes(),
        "session.json": b"{}",
    }
    assert not (tmp_path / "r" / "table.json.tmp").exists()


# ------------------------------------------------------------------ fencing


class Interceptor(ObjectStore):
    """The real store, with ``hook`` run once, before the first call of ``method`` (``"put"``:
    an object upload, ``"put_new"``: a manifest commit): another replica acting right then."""

    def __init__(self, store: ObjectStore, method: str, hook) -> None:
        self.inner, self.url, self.method, self.hook = store, store.url, method, hook

    def _before(self, method: str) -> None:
        if method == self.method and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()

    def put(self, key, data):
        self._before("put")
        self.inner.put(key, data)

    def put_new(self, key, data):
        self._before("put_new")
        return self.inner.put_new(key, data)

    def get(self, key):
        return self.inner.get(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def delete(self, keys):
        self.inner.delete(keys)


def test_the_old_owner_is_fenced_and_the_store_keeps_the_new_owners_state(store, engine, tmp_path):
    old_session = shapes_session(engine, tmp_path / "old")
    old = SessionMirror(store, "s1", fence=1, owner="old")
    old.publish(tmp_path / "old")

    # a new owner takes over while the old one uploads, after it read the latest manifest
    takeover = {}

    def new_owner_restores():
        takeover["mirror"] = SessionMirror.restore(store, "s1", tmp_path / "new", fence=2, owner="new")

    more_frames(old_session, 4, 100.0)
    racing = SessionMirror(Interceptor(store, "put", new_owner_restores), "s1", fence=1, owner="old")
    with pytest.raises(FencedError, match="taken over by 'new' \\(fence 2 > 1\\)"):
        racing.publish(tmp_path / "old")
    assert racing.stats()["objects_uploaded"] > 0  # it did upload, under its own fence, after the claim
    orphans = {k for k in object_keys(store, "s1") if "/objects/0000000001/" in k} - referenced(store, "s1")
    assert orphans

    new = takeover["mirror"]
    new_session = Session.resume(tmp_path / "new", engine)
    more_frames(new_session, 6, 200.0)
    new_blocks = new_session.stats().blocks
    new.publish(tmp_path / "new")
    assert not orphans & object_keys(store, "s1")  # the new owner collected the old one's garbage
    with pytest.raises(FencedError):  # a late publish of the old owner, however it is timed
        old.publish(tmp_path / "old")
    with pytest.raises(FencedError):
        old.claim()
    assert verify(store, "s1") == []
    old_session.close()
    new_session.close()

    SessionMirror.restore(store, "s1", tmp_path / "third", fence=3, owner="third")
    assert local_files(tmp_path / "third") == local_files(tmp_path / "new")
    third = Session.resume(tmp_path / "third", engine)
    assert third.stats().blocks == new_blocks
    assert third.ask(DIAMOND, max_new_tokens=4).text.strip() == "7"
    third.close()


def test_a_commit_landing_during_a_restore_is_restored_too(store, engine, tmp_path):
    """The old owner publishes once more after the new one downloaded: the new owner's
    claim fails, it brings its copy up to that version and claims on top of it."""
    session = shapes_session(engine, tmp_path / "old")
    old = SessionMirror(store, "s1", fence=1, owner="old")
    old.publish(tmp_path / "old")

    def old_owner_publishes_again():
        more_frames(session, 4, 100.0)
        assert old.publish(tmp_path / "old") == 2

    new = SessionMirror.restore(
        Interceptor(store, "put_new", old_owner_publishes_again), "s1", tmp_path / "new", 2, "new"
    )
    assert new.version == 3
    assert local_files(tmp_path / "new") == local_files(tmp_path / "old")
    blocks = session.stats().blocks
    session.close()
    resumed = Session.resume(tmp_path / "new", engine)
    assert resumed.stats().blocks == blocks
    resumed.close()
    with pytest.raises(FencedError):
        old.publish(tmp_path / "old")


def test_restore_refuses_what_it_cannot_do(store, engine, tmp_path):
    with pytest.raises(NoSuchSessionError, match="no published session 'nobody'"):
        SessionMirror.restore(store, "nobody", tmp_path / "x", fence=1, owner="a")
    session = shapes_session(engine, tmp_path / "a")
    SessionMirror(store, "s1", fence=5, owner="a").publish(tmp_path / "a")
    with pytest.raises(RestoreTargetError, match="already holds a session"):
        SessionMirror.restore(store, "s1", tmp_path / "a", fence=6, owner="b")
    with pytest.raises(FencedError, match="fence 5 > 4"):
        SessionMirror.restore(store, "s1", tmp_path / "b", fence=4, owner="b")
    with pytest.raises(ConfigError, match="session id"):
        SessionMirror(store, "../x", fence=1, owner="a")
    session.close()


# ------------------------------------------------------- garbage and integrity


def test_garbage_collection_keeps_two_manifests_and_only_their_objects(store, engine, tmp_path):
    directory = tmp_path / "a"
    session = shapes_session(engine, directory)
    mirror = SessionMirror(store, "s1", fence=1, owner="a")
    counts = []
    for i in range(20):
        more_frames(session, 2, 100.0 + 2 * i)
        assert mirror.publish(directory) == i + 1
        manifests = store.list("sessions/s1/manifests/")
        assert len(manifests) == min(i + 1, 2)
        assert object_keys(store, "s1") == referenced(store, "s1")
        counts.append(len(object_keys(store, "s1")))
    files = len(local_files(directory))
    segments = sum(rel.endswith(".seg") for rel in local_files(directory))
    # rewritten files: at most two versions each; segments: one part per publish that grew them
    assert max(counts) <= 2 * files + 20 * segments
    assert mirror.stats()["objects_uploaded"] > counts[-1] + 50  # far more were uploaded than kept
    assert verify(store, "s1") == []
    session.close()


def test_verify_finds_missing_and_garbled_objects_and_restore_refuses_them(store, tmp_path):
    directory = tmp_path / "d"
    (directory / "segments").mkdir(parents=True)
    (directory / "segments" / "00000001.seg").write_bytes(b"x" * 5000)
    (directory / "session.json").write_text('{"n": 1}')
    (directory / "table.json").write_text('{"blocks": []}')
    SessionMirror(store, "s1", fence=1, owner="a").publish(directory)
    assert verify(store, "s1") == []
    keys = sorted(object_keys(store, "s1"))
    seg, session_json, table = (
        next(k for k in keys if k.endswith(name)) for name in (".seg", "session.json", "table.json")
    )
    store.delete([table])
    store.put(seg, b"y" * 5000)  # same length, other bytes
    problems = verify(store, "s1")
    assert len(problems) == 2
    assert any("segments/00000001.seg" in p and "crc32" in p for p in problems)
    assert any("table.json" in p and "object missing" in p for p in problems)
    with pytest.raises(ObjectStoreError, match="is corrupt|is damaged"):
        SessionMirror.restore(store, "s1", tmp_path / "r", fence=2, owner="b")
    assert not (tmp_path / "r" / "session.json").exists()  # nothing half-restored is a session
    assert session_json in object_keys(store, "s1")


def test_delete_session_removes_everything(store, tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "session.json").write_text("{}")
    SessionMirror(store, "gone", fence=1, owner="a").publish(directory)
    SessionMirror(store, "kept", fence=1, owner="a").publish(directory)
    delete_session(store, "gone")
    assert store.list("sessions/gone/") == [] and latest_version(store, "gone") is None
    assert latest_version(store, "kept") == 1
    with pytest.raises(NoSuchSessionError):
        verify(store, "gone")


def test_a_delete_with_a_fence_leaves_a_tombstone_no_late_writer_passes(store, tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "session.json").write_text("{}")
    late = SessionMirror(store, "cam", fence=1, owner="a")
    late.publish(directory)
    delete_session(store, "cam", fence=2, owner="b")  # b took the lease (fence 2) and deleted it
    (tombstone,) = store.list("sessions/cam/")  # one empty manifest, no object
    assert tombstone.startswith("sessions/cam/manifests/") and latest_version(store, "cam") is None
    with pytest.raises(FencedError):
        late.publish(directory)  # a's publish, racing the delete, cannot bring it back
    with pytest.raises(NoSuchSessionError):
        SessionMirror.restore(store, "cam", tmp_path / "r1", 3, "c")
    assert store.list("sessions/cam/") == [tombstone]
    # a new session of that name (a newer fence) publishes on top of the tombstone
    fresh = SessionMirror(store, "cam", fence=3, owner="c")
    version = fresh.publish(directory)
    assert latest_version(store, "cam") == version and verify(store, "cam") == []
    SessionMirror.restore(store, "cam", tmp_path / "r2", 4, "d")
    assert (tmp_path / "r2" / "session.json").read_text() == "{}"
