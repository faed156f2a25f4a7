"""Positions stay inside the model's range however long the stream (invariant 6 of
docs/architecture.md): past ``max_position_span`` the attended blocks are re-based."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.errors import ConfigError

QUESTION = "what colour was the square?"


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava-ov"])
def engine(request) -> StreamVLM:
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def frames(n: int, seed: int = 0, step: float = 1.0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, size=(56, 56, 3), dtype=np.uint8), step * i) for i in range(n)]


class PositionSpy:
    """Every position id the language model is given (wraps Backend.forward)."""

    def __init__(self, backend, monkeypatch):
        self.largest = -1
        forward = backend.forward

        def spy(embeds, positions, cache, *args, **kwargs):
            self.largest = max(self.largest, int(positions.max()))
            return forward(embeds, positions, cache, *args, **kwargs)

        monkeypatch.setattr(backend, "forward", spy)


def test_a_stream_far_past_the_span_never_reaches_it(engine, monkeypatch):
    spy = PositionSpy(engine.backend, monkeypatch)
    span = 400  # the sink and the question take about 250 of it with the tiny tokenizer
    session = engine.new_session(memory=MemoryConfig(window=4, max_position_span=span))
    # 10 s between frames: the Qwen2.5-VL time axis passes the span after a few frames
    for i, frame in enumerate(frames(120, step=10.0)):
        session.add_frame(*frame)
        if i % 40 == 39:
            session.ask(QUESTION, max_new_tokens=2, top_k=2)
    session.ask(QUESTION, max_new_tokens=2, top_k=2)
    stats = session.stats()
    assert session.next_position > span  # the stream's own counter runs on
    assert spy.largest < span and stats.max_position_span_used <= span
    assert all(m.max_position < span for m in session.blocks.metas())
    assert stats.blocks == 120 // engine.backend.default_chunk_frames


def test_while_the_stream_fits_positions_are_its_own(engine):
    bounded = engine.new_session(memory=MemoryConfig(window=4, max_position_span=10_000))
    plain = engine.new_session(memory=MemoryConfig(window=4))
    clip = frames(8, seed=1)
    bounded.add_frames(clip)
    plain.add_frames(clip)
    for a, b in zip(bounded.blocks.metas(), plain.blocks.metas(), strict=True):
        assert torch.equal(a.positions, b.positions)
    options = dict(max_new_tokens=3, stop_token_ids=())
    assert bounded.ask(QUESTION, **options).token_ids == plain.ask(QUESTION, **options).token_ids
    assert bounded.stats().max_position_span_used == plain.stats().max_position_span_used


def test_a_question_past_the_span_is_answered_as_the_contiguous_layout_would(engine):
    """Encoding fits, the question does not: the answer re-bases its blocks after the sink,
    which is exactly the contiguous layout (checked against it, token for token)."""
    if engine.backend.position_dims == 1:
        pytest.skip("1-D positions of a stream are contiguous already: re-basing frees no room")
    clip = frames(6, seed=2, step=20.0)
    fits = engine.new_session(memory=MemoryConfig(window=64))
    fits.add_frames(clip)
    top = max(m.max_position for m in fits.blocks.metas())
    span = top + 8  # room for the video, not for the question after it
    bounded = engine.new_session(memory=MemoryConfig(window=64, max_position_span=span))
    bounded.add_frames(clip)
    options = dict(max_new_tokens=2, stop_token_ids=())
    rebased = bounded.ask(QUESTION, **options)
    contiguous = fits.ask(QUESTION, positions="contiguous", **options)
    assert rebased.token_ids == contiguous.token_ids
    assert bounded.stats().max_position_span_used <= span


def test_a_span_too_small_for_the_window_is_one_clear_error(engine):
    session = engine.new_session(memory=MemoryConfig(window=64, max_position_span=40))
    with pytest.raises(ConfigError, match="past max_position_span=40 even after re-basing") as info:
        session.add_frames(frames(12))
    assert "\n" not in str(info.value)


def test_a_default_question_past_the_span_retrieves_within_it(engine, monkeypatch):
    """Every block no longer fits inside the span: the default (lossless) question becomes
    retrieval within the span instead of failing, on 1-D positions too."""
    spy = PositionSpy(engine.backend, monkeypatch)
    span = 400
    session = engine.new_session(memory=MemoryConfig(window=4, max_position_span=span))
    session.add_frames(frames(160, step=10.0))  # more blocks than the span holds
    assert session.answer_tokens == span  # the tiny model's KV is small: the span binds first
    answer = session.ask(QUESTION, max_new_tokens=2)
    assert answer.mode == "retrieval" and answer.left_out > 0
    assert answer.context_tokens <= span
    assert spy.largest < span and session.stats().max_position_span_used <= span
