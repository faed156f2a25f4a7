"""The session's two plain steps, the options of a question resolved once (AnswerPlan),
and the stream's counters saved and restored whole (StreamState)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from streamvlm import AnswerPlan, MemoryConfig, Session, StreamState, StreamVLM
from streamvlm.errors import ConfigError
from streamvlm.memory.checkpoint import SESSION_FILE
from streamvlm.runtime.decode import SamplingParams

QUESTION = "what colour was the square?"


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


def frames(n: int, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, size=(56, 56, 3), dtype=np.uint8), float(i)) for i in range(n)]


def test_encode_chunk_and_answer_are_what_add_frame_and_ask_do(engine):
    stepped = engine.new_session(memory=MemoryConfig(window=8))
    clip = frames(6)
    stepped.state.t0 = clip[0][1]  # the stream clock's job when frames come through add_frame
    metas = [stepped.encode_chunk(clip[i : i + 2]) for i in range(0, 6, 2)]
    assert [m.id for m in metas] == [0, 1, 2] and [m.frames for m in metas] == [2, 2, 2]
    plain = engine.new_session(memory=MemoryConfig(window=8))
    plain.add_frames(clip)
    assert stepped.next_position == plain.next_position
    for a, b in zip(stepped.blocks.load([0, 1, 2]), plain.blocks.load([0, 1, 2]), strict=True):
        for (k1, v1), (k2, v2) in zip(a.layers, b.layers, strict=True):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
    plan = AnswerPlan.resolve(stepped.memory, max_new_tokens=3, stop_token_ids=())
    stream = stepped.answer(QUESTION, plan)
    assert stream.answer is None and stream.selection is None  # nothing runs before the first delta
    text = "".join(stream)
    assert text == stream.answer.text
    assert stream.selection.union == [0, 1, 2]
    assert stream.answer.token_ids == plain.ask(QUESTION, max_new_tokens=3, stop_token_ids=()).token_ids


def test_a_one_frame_chunk_is_padded_but_counts_its_real_frame(engine):
    session = engine.new_session()
    session.add_frame(*frames(1)[0])
    session.flush()
    (meta,) = session.blocks.metas()
    assert meta.frames == 1 and session.state.frames_encoded == 1 and session.state.chunks_encoded == 1


def test_answer_plan_takes_the_config_and_overrides_it_for_one_question():
    config = MemoryConfig(window=12, top_k=3, answer_window=4, selection="per_layer", neighbours=1)
    plan = AnswerPlan.resolve(config)
    assert (plan.top_k, plan.answer_window, plan.selection, plan.neighbours) == (3, 4, "per_layer", 1)
    assert plan.encode_window == 12 and plan.positions == "original" and plan.retrieves
    assert plan.sampling == SamplingParams()
    mine = AnswerPlan.resolve(config, top_k=1, answer_window=0, positions="contiguous", max_new_tokens=5)
    assert (mine.top_k, mine.answer_window, mine.positions, mine.sampling.max_new_tokens) == (
        1,
        0,
        "contiguous",
        5,
    )
    # without answer_window anywhere, the encoding window is what every answer sees
    assert AnswerPlan.resolve(MemoryConfig(window=7)).answer_window == 7
    named = AnswerPlan.resolve(config, blocks=[3, 1])
    assert named.blocks == (3, 1) and not named.retrieves
    # a question waits for its frames by default, as long as the config says
    assert (plan.wait, plan.wait_s) == (True, 60.0)
    quick = AnswerPlan.resolve(MemoryConfig(question_wait_s=5), wait=False)
    assert (quick.wait, quick.wait_s) == (False, 5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_k": 0}, "top_k must be >= 1 or 'all', got 0"),
        ({"answer_window": -1}, "answer_window must be >= 0 frames, got -1"),
        ({"positions": "sideways"}, "positions must be one of original, contiguous, got 'sideways'"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and"),
        ({"topk": 3}, "unknown question option topk"),
        ({"wait": 1}, "wait must be true or false, got 1"),
    ],
)
def test_answer_plan_rejects_bad_options_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        AnswerPlan.resolve(MemoryConfig(), **options)
    assert "\n" not in str(info.value)


def test_a_bad_option_fails_before_the_question_runs(engine):
    session = engine.new_session()
    session.add_frames(frames(4))
    with pytest.raises(ConfigError, match="unknown question option"):
        session.ask_stream(QUESTION, tok_k=2)
    assert session.ask(QUESTION, max_new_tokens=1).timings.new_tokens == 1  # the session carries on


def test_stream_state_is_saved_whole_and_restored_whole(engine, tmp_path):
    session = engine.new_session(memory=MemoryConfig(disk_dir=str(tmp_path / "s"), disk_flush_blocks=1))
    session.add_frames(frames(5))  # two blocks and one frame pending
    saved = json.loads((tmp_path / "s" / SESSION_FILE).read_text())
    state = StreamState.from_dict(saved)
    assert state.chunks_encoded == 2 and state.frames_encoded == 4
    assert state.next_position == session.next_position and state.t0 == 0.0
    session.close()  # the pending frame becomes a third block
    resumed = Session.resume(tmp_path / "s", engine)
    assert resumed.state == session.state
    assert StreamState.from_dict({"frames_seen": 3}) == StreamState(frames_seen=3)  # older records
    resumed.close()


def test_stream_state_moves_on_by_blocks_recovered_after_it_was_saved(engine):
    session = engine.new_session()
    session.add_frames(frames(6))
    metas = session.blocks.metas()
    state = StreamState(t0=0.0, last_t=1.0, next_position=session.video_start, frames_seen=2)
    state.recover(metas[1:])
    assert state.frames_seen == 2 + 4 and state.chunks_encoded == 2
    assert state.last_t == metas[-1].t_end and state.next_position == metas[-1].max_position + 1


def test_questions_never_change_how_frames_are_chunked(engine):
    clip = frames(12, seed=5)
    quiet, asking = engine.new_session(), engine.new_session()
    quiet.add_frames(clip)
    for i, frame in enumerate(clip):
        asking.add_frame(*frame)
        if i % 3 == 2:  # every 3 frames: every other question lands mid-chunk
            asking.ask(QUESTION, max_new_tokens=1)
    spans = [(m.t_start, m.t_end, m.frames) for m in quiet.blocks.metas()]
    assert [(m.t_start, m.t_end, m.frames) for m in asking.blocks.metas()] == spans
    assert len(spans) == 6 and asking.state == quiet.state
    ids = [m.id for m in quiet.blocks.metas()]
    for a, b in zip(asking.blocks.load(ids), quiet.blocks.load(ids), strict=True):
        for (k1, v1), (k2, v2) in zip(a.layers, b.layers, strict=True):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_a_question_mid_chunk_attends_the_pending_frames_as_a_flushed_block_would(engine):
    clip = frames(5, seed=6)
    pending, flushed = engine.new_session(), engine.new_session()
    pending.add_frames(clip)
    flushed.add_frames(clip)
    flushed.flush()  # what a question did before: commit the padded partial chunk
    options = dict(max_new_tokens=3, stop_token_ids=())
    a, b = pending.ask_stream(QUESTION, **options), flushed.ask_stream(QUESTION, **options)
    assert a.position == b.position  # the question starts after the pending frames' positions
    list(a), list(b)
    assert a.answer.token_ids == b.answer.token_ids
    assert [r.tier for r in a.answer.blocks] == ["device", "device", "pending"]
    assert pending.stats().blocks == 2 and pending.state.frames_seen == 5
    retrieved = pending.ask(QUESTION, top_k=1, answer_window=0, max_new_tokens=1)
    assert all(r.tier != "pending" for r in retrieved.blocks)  # never retrieved: not in the index


def context_tokens(session, answer, max_new_tokens: int) -> int:
    question = session.backend.prompt_parts(session.system_prompt, QUESTION).question
    extra = session.backend.question_embeds(question).shape[0]
    return len(session.sink.ids) + sum(b.tokens for b in answer.blocks) + extra + max_new_tokens


def test_a_budget_every_block_fits_in_answers_losslessly(engine, monkeypatch):
    free = engine.new_session(memory=MemoryConfig(window=4))
    free.add_frames(frames(12, seed=7))
    unbounded = free.ask(QUESTION, max_new_tokens=3, stop_token_ids=())
    roomy = AnswerPlan.resolve(
        MemoryConfig(window=4, answer_tokens=10_000), max_new_tokens=3, stop_token_ids=()
    )
    reads = []
    question_queries = engine.backend.question_queries
    monkeypatch.setattr(
        engine.backend, "question_queries", lambda *a: reads.append(1) or question_queries(*a)
    )
    stream = free.answer(QUESTION, roomy)
    list(stream)
    assert reads == []  # everything fits: the retrieval pass (a question prefill) never runs
    assert stream.answer.token_ids == unbounded.token_ids
    assert (
        (stream.answer.mode, stream.answer.left_out)
        == ("lossless", 0)
        == (unbounded.mode, unbounded.left_out)
    )


@pytest.mark.parametrize("top_k", [None, 5])
def test_a_question_never_holds_more_than_answer_tokens(engine, top_k):
    session = engine.new_session(memory=MemoryConfig(window=4))
    session.add_frames(frames(24, seed=8))  # 12 blocks
    every = session.ask(QUESTION, max_new_tokens=2)
    assert len(every.blocks) == 12
    budget = context_tokens(session, every, 2) - 5 * every.blocks[0].tokens  # room for all but five
    answer = session.ask(QUESTION, max_new_tokens=2, top_k=top_k)
    config = dataclasses.replace(session.memory, answer_tokens=budget)
    stream = session.answer(QUESTION, AnswerPlan.resolve(config, max_new_tokens=2, top_k=top_k))
    list(stream)
    bounded = stream.answer
    assert context_tokens(session, bounded, 2) <= budget
    assert bounded.mode == "retrieval" and bounded.left_out == 12 - len(bounded.blocks)
    assert len(bounded.blocks) == min(len(answer.blocks), 12 - 5)  # the budget is filled
    newest = [b.id for b in every.blocks][-2:]  # the 4-frame answer window: always attended
    assert set(newest) <= {b.id for b in bounded.blocks}


def test_named_blocks_over_the_budget_are_refused_in_one_line(engine):
    session = engine.new_session(memory=MemoryConfig(answer_tokens=60))
    session.add_frames(frames(8, seed=9))
    with pytest.raises(
        ConfigError, match=r"blocks \[0, 1, 2\] need \d+ tokens with the question, over answer_tokens=60"
    ):
        session.ask(QUESTION, blocks=[0, 1, 2], max_new_tokens=1)
    with pytest.raises(ConfigError, match="answer_tokens must be >= 1"):
        MemoryConfig(answer_tokens=0)


def test_stats_count_the_metadata_held_outside_every_budget(engine):
    session = engine.new_session(memory=MemoryConfig(window=4))
    session.add_frames(frames(8, seed=10))
    stats = session.stats()
    b = engine.backend
    meta = session.blocks.metas()[0]
    summary = b.num_layers * b.num_kv_heads * b.head_dim * 4  # float32, per block
    per_block = meta.positions.numel() * 8 + meta.kept.numel() + summary  # the block's metadata
    per_block += summary  # and the retrieval index's copy of its summary
    assert stats.metadata_bytes == stats.blocks * per_block == 4 * per_block


def test_the_default_budget_is_what_the_device_holds_within_the_span(engine):
    per_token = engine.backend.kv_bytes_per_token
    span = engine.backend.max_positions
    assert (
        per_token == 2 * engine.backend.num_layers * engine.backend.num_kv_heads * engine.backend.head_dim * 4
    )
    sized = engine.new_session(memory=MemoryConfig(device_bytes=500 * per_token + 7))
    assert sized.answer_tokens == 500 == sized.stats().answer_tokens
    assert engine.new_session(memory=MemoryConfig(device_bytes=0)).answer_tokens == span
    assert engine.new_session(memory=MemoryConfig(max_position_span=300)).answer_tokens == 300
    assert engine.new_session(memory=MemoryConfig(device_bytes=0, answer_tokens=77)).answer_tokens == 77
    asked = sized.ask_stream(QUESTION, answer_tokens=99)  # per question, as any other option
    assert asked is not None and sized.answer_tokens == 500


def test_device_bytes_of_a_question_stay_flat_as_the_stream_grows(engine):
    """Default question options: the KV a question holds on the device stops growing once the
    device budget is reached (here after about 100 frames), however long the stream."""
    per_token = engine.backend.kv_bytes_per_token
    session = engine.new_session(memory=MemoryConfig(window=4, device_bytes=600 * per_token))
    clip = frames(1000, seed=11)
    held, seen = {}, 0
    for length in (20, 250, 1000):
        session.add_frames(clip[seen:length])
        seen = length
        answer = session.ask(QUESTION, max_new_tokens=2, stop_token_ids=())
        held[length] = (answer.mode, answer.context_tokens, answer.context_bytes)
    assert held[20][0] == "lossless" and held[20][1] < 600
    block = session.blocks.metas()[0].tokens
    for length in (250, 1000):
        mode, tokens, nbytes = held[length]
        assert mode == "retrieval" and 600 - 2 * block <= tokens <= 600  # filled, never past
        assert nbytes == tokens * per_token  # every layer holds the same blocks
    assert abs(held[1000][2] - held[250][2]) <= block * per_token


def test_a_small_device_budget_still_answers_over_the_newest_frames(engine):
    """20 kB of device holds 39 tokens, less than the sink: the question still gets its
    answer window (what encoding holds on the device anyway), and nothing older."""
    session = engine.new_session(memory=MemoryConfig(window=4, device_bytes=20_000))
    session.add_frames(frames(24, seed=3))  # 12 blocks of 2 frames
    assert session.answer_tokens == 20_000 // engine.backend.kv_bytes_per_token
    answer = session.ask(QUESTION, max_new_tokens=2, stop_token_ids=())
    newest = [m.id for m in session.blocks.metas()][-2:]  # the 4-frame answer window
    assert [b.id for b in answer.blocks] == newest
    assert (answer.mode, answer.left_out) == ("retrieval", 10)
