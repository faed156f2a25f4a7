"""Sessions on disk: long streams within budgets, resume, crash safety, disk budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.memory.checkpoint import SessionResumeError
from streamvlm.runtime.session import Session

MODEL = "tiny-qwen2.5-vl"


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained(MODEL, device="cpu", dtype="float32")


def frame(i: int, size: int = 56) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_budgets_hold_over_thousands_of_frames(engine, tmp_path):
    probe = engine.new_session(memory=MemoryConfig(window=4))
    probe.add_frames([(frame(0), 0.0), (frame(1), 1.0)])
    block = probe.blocks.load([0])[0].nbytes  # device bytes of one block
    memory = MemoryConfig(
        window=4,
        device_bytes=3 * block,
        host_bytes=6 * block,
        disk_dir=str(tmp_path / "s"),
        top_k=4,
        answer_tokens=10_000,  # three blocks' worth would not hold the sink: let the question read them all
    )
    session = engine.new_session(memory=memory)
    worst = {"device": 0, "host": 0}
    for i in range(2000):
        session.add_frame(frame(i % 50), float(i))
        tiers = session.stats().bytes_per_tier
        worst = {t: max(worst[t], tiers[t]) for t in worst}
    stats = session.stats()
    assert stats.blocks == 1000 and stats.indexed_blocks == 1000 and stats.frames_encoded == 2000
    assert worst["device"] <= memory.device_bytes and worst["host"] <= memory.host_bytes
    assert stats.bytes_per_tier["device"] == 3 * block  # full, not over
    assert len(session.blocks.disk.held) == 1000  # every block written through
    answer = session.ask("what was there?", max_new_tokens=1)
    tiers = {b.tier for b in answer.blocks}
    assert "disk" in tiers and "device" in tiers and len(answer.blocks) >= 4
    assert session.stats().hits_per_tier["disk"] >= 1
    session.close()


def test_resumed_session_answers_as_before(engine, tmp_path):
    directory = tmp_path / "s"
    memory = MemoryConfig(window=4, top_k=3, disk_dir=str(directory), disk_flush_blocks=3)
    session = engine.new_session(memory=memory)
    session.add_frames((frame(i), 0.5 * i + 100.0) for i in range(17))
    before = session.ask("what happened?", max_new_tokens=6, stop_token_ids=())
    session.flush()  # the odd frame, attended pending by the question, becomes the ninth block
    state = (session.next_position, session.stats().blocks, session.stream_time)
    session.close()

    fresh = StreamVLM.from_pretrained(MODEL, device="cpu", dtype="float32")
    resumed = Session.resume(directory, fresh)
    assert (resumed.next_position, resumed.stats().blocks, resumed.stream_time) == state
    after = resumed.ask("what happened?", max_new_tokens=6, stop_token_ids=())
    assert after.token_ids == before.token_ids
    assert [b.id for b in after.blocks] == [b.id for b in before.blocks]
    assert {b.tier for b in after.blocks} == {"disk"}  # nothing in RAM after a restart
    # it keeps streaming where it left off
    resumed.add_frames((frame(i), 0.5 * i + 100.0) for i in range(17, 21))
    assert resumed.stats().blocks == 11 and resumed.blocks.metas()[-1].t_end == 110.0
    resumed.close()


def test_resume_rejects_other_models_and_non_sessions(engine, tmp_path):
    directory = tmp_path / "s"
    session = engine.new_session(memory=MemoryConfig(disk_dir=str(directory)))
    session.add_frames([(frame(0), 0.0), (frame(1), 1.0)])
    session.close()
    other = StreamVLM.from_pretrained("tiny-llava-ov")
    with pytest.raises(SessionResumeError, match="written by model 'tiny-qwen2.5-vl'"):
        Session.resume(directory, other)
    with pytest.raises(SessionResumeError, match="not a streamvlm session directory"):
        Session.resume(tmp_path, engine)
    with pytest.raises(SessionResumeError, match="already holds a session"):
        engine.new_session(memory=MemoryConfig(disk_dir=str(directory)))
    with pytest.raises(SessionResumeError, match="cannot change disk_codec"):
        Session.resume(directory, engine, disk_codec="identity")


def test_disk_budget_drops_oldest_and_the_index_forgets_them(engine, tmp_path):
    memory = MemoryConfig(
        window=2, device_bytes=0, host_bytes=0, disk_dir=str(tmp_path / "s"), disk_bytes=15_000
    )
    session = engine.new_session(memory=memory)
    session.add_frames((frame(i), float(i)) for i in range(60))
    stats = session.stats()
    assert stats.bytes_per_tier["disk"] <= 15_000
    assert stats.dropped_blocks > 0 and stats.blocks + stats.dropped_blocks == 30
    assert session.blocks.indexed_ids() == [m.id for m in session.blocks.metas()]
    assert session.blocks.metas()[0].id == stats.dropped_blocks  # the oldest went first
    session.ask("still fine?", top_k=2, max_new_tokens=1)
    session.close()


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from streamvlm import MemoryConfig, StreamVLM
    engine = StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    session = engine.new_session(memory=MemoryConfig(window=4, disk_dir=sys.argv[1], disk_flush_blocks=4))
    i = 0
    while True:
        rng = np.random.default_rng(i)
        session.add_frame(rng.integers(0, 256, size=(56, 56, 3), dtype=np.uint8), float(i))
        if session.blocks.blocks_since_checkpoint == 0 and session.state.chunks_encoded:
            print("checkpoint", session.state.chunks_encoded, flush=True)
        i += 1
    """
)


def test_kill_9_loses_at_most_the_unflushed_blocks(engine, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    for attempt, checkpoints in enumerate((3, 7)):
        directory = tmp_path / f"s{attempt}"
        child = subprocess.Popen(
            [sys.executable, str(script), str(directory)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        flushed = 0
        deadline = time.monotonic() + 60
        try:
            while flushed < 4 * checkpoints and time.monotonic() < deadline:
                line = child.stdout.readline()
                if line.startswith("checkpoint"):
                    flushed = int(line.split()[1])
            time.sleep(0.05 * attempt)  # land the kill somewhere inside the next blocks
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        assert flushed >= 4 * checkpoints, "the child did not get far enough"
        resumed = Session.resume(directory, engine)
        ids = [m.id for m in resumed.blocks.metas()]
        assert ids == list(range(len(ids))) and len(ids) >= flushed  # every flushed block, in order
        assert resumed.blocks.disk.log.verify() == []  # nothing comes back corrupt
        assert resumed.blocks.disk.log.recovery is not None
        answer = resumed.ask("anything?", max_new_tokens=1)
        assert [b.id for b in answer.blocks] == ids
        resumed.add_frames([(frame(1), 1e6), (frame(2), 1e6 + 1)])
        assert resumed.stats().blocks == len(ids) + 1
        resumed.close()
