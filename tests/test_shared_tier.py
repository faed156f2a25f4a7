"""The shared long-term tier inside a session: what a store outage or a takeover does to
the session that was running (it goes on; the store gets what it should, or nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from streamvlm import StreamVLM
from streamvlm.memory.mirror import SessionMirror, latest_version, verify
from streamvlm.memory.objectstore import open_store
from streamvlm.memory.shared_tier import SharedDiskTier


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained("streamvlm-tiny-synth", device="cpu")


def frames(n: int, start: int = 0):
    rng = np.random.default_rng(start)
    return [(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), float(start + i)) for i in range(n)]


def test_a_store_that_cannot_be_written_is_retried_at_the_next_checkpoint(engine, tmp_path):
    store = open_store(f"file://{tmp_path / 'shared'}")
    blocked = tmp_path / "shared" / "sessions"
    blocked.write_text("a file where the store's sessions directory should be")
    mirror = SessionMirror(store, "cam0", 1, "a")
    session = engine.new_session(engine.memory(disk_dir=str(tmp_path / "local")), mirror=mirror)
    tier = session.blocks.disk
    assert isinstance(tier, SharedDiskTier)
    assert tier.wait_published(30) and tier.publish_failures == 1  # the first checkpoint
    for rgb, t in frames(4):
        session.add_frame(rgb, t)
    session.checkpoint()
    assert tier.wait_published(30) and tier.publish_failures == 2 and tier.fenced is None
    assert session.ask("What digit did the diamond show?", max_new_tokens=2).text  # it goes on

    blocked.unlink()  # the store is back
    session.checkpoint()
    assert tier.wait_published(30) and tier.published_through == 1
    assert tier.published_version == 1 and latest_version(store, "cam0") == 1
    assert verify(store, "cam0") == []
    session.close()
    restored = SessionMirror.restore(store, "cam0", tmp_path / "restored", 2, "b")
    again = engine.resume_session(tmp_path / "restored", mirror=restored)
    assert len(again.blocks.metas()) == len(session.blocks.metas()) == 2
    again.close()


def test_a_session_taken_over_stops_publishing_and_says_so_once(engine, tmp_path):
    store = open_store(f"file://{tmp_path / 'shared'}")
    session = engine.new_session(
        engine.memory(disk_dir=str(tmp_path / "old")), mirror=SessionMirror(store, "cam0", 1, "a")
    )
    for rgb, t in frames(4):
        session.add_frame(rgb, t)
    session.checkpoint()
    assert session.blocks.disk.wait_published(30)
    told = []
    session.blocks.disk.on_fenced = told.append

    # another replica takes the session over (fence 2) from what was published
    SessionMirror.restore(store, "cam0", tmp_path / "new", 2, "b")
    taken_at = latest_version(store, "cam0")
    for rgb, t in frames(4, start=4):
        session.add_frame(rgb, t)
    session.checkpoint()
    session.blocks.disk.wait_published(30)
    session.checkpoint()
    session.blocks.disk.wait_published(30)
    assert len(told) == 1 and session.blocks.disk.fenced is not None
    assert latest_version(store, "cam0") == taken_at and verify(store, "cam0") == []
    assert len(session.blocks.metas()) == 4  # its local copy goes on
    session.close()
