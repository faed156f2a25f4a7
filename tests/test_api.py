"""The public Python API: loading, sessions, answers, stats and typed errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from streamvlm import (
    ConfigError,
    InvalidFrameError,
    InvalidQuestionError,
    MemoryConfig,
    ModelNotFoundError,
    StreamVLM,
)
from streamvlm.models.tiny import save_tiny_checkpoint
from streamvlm.runtime.decode import SamplingParams, choose_token


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu")


def frames(n: int, size=(56, 84)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def test_session_stats_and_answer_fields(engine):
    session = engine.new_session(memory=MemoryConfig(window=4))
    for i, frame in enumerate(frames(5)):
        session.add_frame(frame, t=10.0 + i)
    before = session.stats()
    assert (before.frames_seen, before.frames_encoded, before.blocks) == (5, 4, 2)
    answer = session.ask("what is happening?", max_new_tokens=4)
    stats = session.stats()
    # the odd frame was encoded for the question alone (padded) and stays pending: no third block
    assert (stats.frames_encoded, stats.blocks, stats.chunks_encoded) == (4, 2, 2)
    assert stats.stream_time == 14.0 and answer.asked_at == 14.0
    per_block = stats.tokens_stored // 2
    kv_bytes = 2 * engine.backend.num_layers * engine.backend.num_kv_heads * engine.backend.head_dim * 4
    assert stats.bytes_per_tier == {"device": stats.tokens_stored * kv_bytes, "host": 0, "disk": 0}
    assert [(b.t_start, b.t_end) for b in answer.blocks] == [(10.0, 11.0), (12.0, 13.0), (14.0, 14.0)]
    assert all(b.tokens == per_block for b in answer.blocks)
    assert [b.tier for b in answer.blocks] == ["device", "device", "pending"]
    assert [b.id for b in answer.blocks] == [0, 1, 2]  # the pending frame: the id its block will get
    json.dumps(answer.to_dict()), json.dumps(stats.to_dict())


def test_answer_blocks_limits_context_to_recent_blocks(engine):
    session = engine.new_session(memory=MemoryConfig(window=2, answer_blocks=1))
    session.add_frames((f, float(i)) for i, f in enumerate(frames(8)))
    answer = session.ask("what now?", max_new_tokens=1)
    assert [b.id for b in answer.blocks] == [3]  # the newest block; the window (2 frames) is that block too


def test_encode_context_is_bounded_by_window(engine, monkeypatch):
    """Per-frame cost does not grow: each chunk attends to sinks + at most `window` frames."""
    session = engine.new_session(memory=MemoryConfig(window=4))
    seen: list[int] = []
    real_cache_of_parts = engine.backend.cache_of_parts

    def spy(parts_per_layer, room):
        seen.append(sum(k.shape[1] for k, _ in parts_per_layer[0]))  # context tokens before the chunk
        return real_cache_of_parts(parts_per_layer, room)

    monkeypatch.setattr(engine.backend, "cache_of_parts", spy)
    session.add_frames((f, float(i)) for i, f in enumerate(frames(16)))
    per_block = session.stats().tokens_stored // session.stats().blocks
    sink = len(session.sink.ids)
    assert seen[:3] == [sink, sink + per_block, sink + 2 * per_block]
    assert max(seen) == sink + 2 * per_block  # 4 frames = 2 blocks, never more
    assert session.stats().blocks == 8


def test_ask_stream_yields_deltas_that_add_up(engine):
    session = engine.new_session()
    session.add_frames((f, float(i)) for i, f in enumerate(frames(4)))
    stream = session.ask_stream("describe it", max_new_tokens=12, stop_token_ids=())
    deltas = list(stream)
    assert "".join(deltas) == stream.answer.text
    assert stream.answer.timings.new_tokens == 12 and stream.answer.finish_reason == "length"
    greedy = session.ask("describe it", max_new_tokens=12, stop_token_ids=())
    assert greedy.token_ids == stream.answer.token_ids


def test_sampling_is_seeded_and_top_p_restricts():
    logits = torch.tensor([2.0, 1.0, 0.5, -3.0])
    # softmax masses: 0.626, 0.230, 0.140, 0.004
    gen = torch.Generator().manual_seed(3)
    picks = {choose_token(logits, SamplingParams(temperature=1.0, top_p=0.7), gen) for _ in range(300)}
    assert picks == {0, 1}  # 0.626 < 0.7, so token 1 is needed; 0.856 >= 0.7, so the rest are cut
    gen = torch.Generator().manual_seed(3)
    assert {choose_token(logits, SamplingParams(temperature=1.0, top_p=0.6), gen) for _ in range(100)} == {0}
    gen = torch.Generator().manual_seed(3)
    assert {choose_token(logits, SamplingParams(temperature=1.0), gen) for _ in range(300)} == {0, 1, 2}
    assert choose_token(logits, SamplingParams(), None) == 0


def test_sampled_answers_repeat_with_a_seed(engine):
    session = engine.new_session()
    session.add_frames((f, float(i)) for i, f in enumerate(frames(2)))
    a = session.ask("q", max_new_tokens=8, temperature=1.0, seed=7, stop_token_ids=())
    b = session.ask("q", max_new_tokens=8, temperature=1.0, seed=7, stop_token_ids=())
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize(
    "question, match",
    [
        ("", "question is empty"),
        ("   ", "question is empty"),
        ("x" * 3000, "over the limit of 2000"),
        (42, "must be text"),
    ],
)
def test_bad_questions_raise_typed_errors(engine, question, match):
    session = engine.new_session()
    with pytest.raises(InvalidQuestionError, match=match):
        session.ask(question)


@pytest.mark.parametrize(
    "frame, t, match",
    [
        (np.zeros((32, 32), np.uint8), 0.0, r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.float32), 0.0, "must be uint8"),
        ([[1, 2, 3]], 0.0, "numpy array"),
        (np.zeros((1, 1, 3), np.uint8), 0.0, "too small"),
        (np.zeros((32, 32, 3), np.uint8), float("nan"), "finite"),
    ],
)
def test_bad_frames_raise_typed_errors(engine, frame, t, match):
    session = engine.new_session()
    with pytest.raises(InvalidFrameError, match=match):
        session.add_frame(frame, t)
    assert session.stats().frames_seen == 0


def test_bad_input_loses_nothing(engine):
    session = engine.new_session()
    session.add_frames((f, float(i)) for i, f in enumerate(frames(4)))
    with pytest.raises(InvalidFrameError, match="before the previous frame"):
        session.add_frame(frames(1)[0], 1.0)
    with pytest.raises(InvalidQuestionError):
        session.ask("")
    assert session.stats().frames_seen == 4 and session.stats().blocks == 2
    assert session.ask("still there?", max_new_tokens=2).blocks[-1].t_end == 3.0


def test_large_frames_are_downscaled_by_the_pixel_budget(engine):
    session = engine.new_session()
    big = np.full((2160, 3840, 3), 128, np.uint8)
    session.add_frame(big, 0.0)
    session.add_frame(big, 1.0)
    # the tiny model's video budget (64 * 28 * 28 pixels) keeps a 4K pair to <= 64 merged tokens
    assert 32 <= session.stats().tokens_stored <= 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_bad_sampling_options(engine, kwargs, match):
    session = engine.new_session()
    with pytest.raises(ConfigError, match=match):
        session.ask("q", **kwargs)


def test_bad_memory_config():
    with pytest.raises(ConfigError, match="window"):
        MemoryConfig(window=-1)
    with pytest.raises(ConfigError, match="multiple of 2"):
        StreamVLM.from_pretrained("tiny-qwen2.5-vl").new_session(memory=MemoryConfig(chunk_frames=3))


def test_unknown_model_name_fails_fast_with_one_line():
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        StreamVLM.from_pretrained("no-such-model-anywhere")
    message = str(info.value)
    assert "no-such-model-anywhere" in message and "\n" not in message and "tiny-qwen2.5-vl" in message
    assert time.perf_counter() - started < 10


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        StreamVLM.from_pretrained(str(tmp_path))


def test_local_checkpoint_loads_through_from_pretrained(tmp_path, engine):
    """The real from_pretrained path: save the tiny model like a release and load it back."""
    save_tiny_checkpoint("tiny-qwen2.5-vl", tmp_path)
    loaded = StreamVLM.from_pretrained(str(tmp_path), device="cpu")
    assert type(loaded.backend) is type(engine.backend)
    clip = [(f, float(i)) for i, f in enumerate(frames(4))]
    answers = []
    for eng in (engine, loaded):
        session = eng.new_session()
        session.add_frames(clip)
        answers.append(session.ask("same?", max_new_tokens=5, stop_token_ids=()).token_ids)
    assert answers[0] == answers[1]


def test_llava_checkpoint_with_wrong_family_is_explained(tmp_path):
    from transformers import BertConfig

    BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="is a 'bert' model; streamvlm supports"):
        StreamVLM.from_pretrained(str(tmp_path))


def test_text_streamer_holds_back_split_characters():
    from streamvlm.models.tokenizer import build_tiny_tokenizer
    from streamvlm.runtime.decode import TextStreamer

    tokenizer = build_tiny_tokenizer()
    text = "héllo → wörld ✓ 日本"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())  # byte-level: one token per byte
    streamer = TextStreamer(tokenizer)
    deltas = [streamer.push(i) for i in ids] + [streamer.finish()]
    assert "".join(deltas) == text == streamer.text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[ids.index(195)] == ""  # first byte of 'é' alone prints nothing
