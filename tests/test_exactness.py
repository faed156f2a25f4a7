"""Streaming encode + answer against the plain transformers forward (issue 2, section 8).

For both tiny architectures, in float32, with atol 1e-4:
1. chunked streaming with a window covering the stream == one plain forward;
2. with a smaller window, every block's KV == a forward with an explicit
   (sinks + window) attention mask;
3. ask() first-token logits and greedy answer == plain forward + greedy decode;
4. dropping a block == the plain forward with that block masked out for the question.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.memory.block import recent_by_frames

ATOL = 1e-4
QUESTION = "what colour was the square?"
MODELS = ["tiny-qwen2.5-vl", "tiny-llava-ov"]


@pytest.fixture(scope="module", params=MODELS)
def engine(request) -> StreamVLM:
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def make_frames(n: int, height: int = 60, width: int = 90, seed: int = 0) -> list[np.ndarray]:
    """Smooth random frames with a moving square, so chunks differ from each other."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 6 + 1, width // 6 + 1, 3)).astype(np.uint8)
    frames = []
    for i in range(n):
        frame = np.kron(base, np.ones((6, 6, 1), np.uint8))[:height, :width].copy()
        frame[10 + i : 25 + i, 5 + 3 * i : 20 + 3 * i] = (250, 30 * i % 256, 20)
        frames.append(frame)
    return frames


def stream(engine, frames, times, **memory):
    session = engine.new_session(memory=MemoryConfig(**memory))
    for frame, t in zip(frames, times, strict=True):
        session.add_frame(frame, t)
    session.flush()
    return session


def chunks_of(session, frames):
    """The frames of each stored block (padding the last like the session does)."""
    out, i = [], 0
    for meta in session.blocks.metas():
        chunk = frames[i : i + meta.frames]
        while len(chunk) % session.backend.frame_multiple:
            chunk = chunk + [chunk[-1]]
        out.append(chunk)
        i += meta.frames
    return out


def question_parts(session, question=QUESTION):
    backend = session.backend
    ids = backend.prompt_parts(session.system_prompt, question).question
    n = backend.question_embeds(ids).shape[0]
    return ids, backend.text_positions(session.next_position, n)


def reference_forward(session, frames, question_ids, extra_positions, mask=None):
    """One plain transformers forward over sink + every frame + the question text.

    Uses the model's own vision path (``pixel_values_videos``) and placeholder tokens,
    with the session's position ids. Returns (logits [L, vocab], cache, slot ranges).
    """
    backend, model = session.backend, session.backend.model
    metas = session.blocks.metas()
    n_visual = sum(m.tokens for m in metas)
    positions = [session.sink.positions, *(m.positions for m in metas), extra_positions]
    positions = torch.cat(positions, dim=1)
    if backend.family == "qwen2.5-vl":
        pixels, grids = zip(*(backend.preprocess(c) for c in chunks_of(session, frames)), strict=True)
        assert len({g[1:] for g in grids}) == 1, "reference needs one frame size"
        grid = torch.tensor([[sum(g[0] for g in grids), *grids[0][1:]]])
        video = model.config.video_token_id
        ids = session.sink.ids + [video] * n_visual + list(question_ids)
        inputs = dict(
            pixel_values_videos=torch.cat(pixels), video_grid_thw=grid, position_ids=positions[:, None]
        )
    else:
        pixels = torch.cat([backend.preprocess(c) for c in chunks_of(session, frames)])[None]
        video = model.config.video_token_id
        # the end-of-video newline row is the question's first embedding in the session
        ids = session.sink.ids + [video] * (n_visual + 1) + list(question_ids)
        inputs = dict(pixel_values_videos=pixels, position_ids=positions)
    assert len(ids) == positions.shape[1]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), attention_mask=mask, use_cache=True, **inputs)
    return out.logits[0].float(), out.past_key_values


def slot_ranges(session):
    """[start, end) cache slots of the sink and of each block in the reference sequence."""
    start = len(session.sink.ids)
    ranges = {"sink": (0, start)}
    for meta in session.blocks.metas():
        ranges[meta.id] = (start, start + meta.tokens)
        start += meta.tokens
    ranges["question"] = (start, None)
    return ranges


def block_mask(session, length, visible_blocks_for, question_blocks):
    """Additive 4D mask: sink causal; block b sees sink + visible_blocks_for(b) + itself causally;
    the question sees sink + question_blocks + itself causally."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    ranges = slot_ranges(session)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    s0, s1 = ranges["sink"]
    allowed[:, s0:s1] = True
    for meta in session.blocks.metas():
        b0, b1 = ranges[meta.id]
        for other in visible_blocks_for(meta.id):
            o0, o1 = ranges[other]
            allowed[b0:b1, o0:o1] = True
        allowed[b0:b1, b0:b1] = True
    q0 = ranges["question"][0]
    for other in question_blocks:
        o0, o1 = ranges[other]
        allowed[q0:, o0:o1] = True
    allowed[q0:, q0:] = True
    allowed &= causal
    mask = torch.zeros(length, length)
    mask[~allowed] = torch.finfo(torch.float32).min
    return mask[None, None]


# --------------------------------------------------------------------------------------


def test_positions_follow_stream_time_and_counter_is_separate(engine):
    frames = make_frames(6)
    times = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0]
    session = stream(engine, frames, times, window=64)
    metas = session.blocks.metas()
    all_max = max(m.max_position for m in metas)
    assert session.next_position == all_max + 1
    start = session.video_start
    if engine.backend.family == "qwen2.5-vl":
        tps = engine.backend.model.config.vision_config.tokens_per_second
        # one block per temporal patch of 2 frames; time row = start + round(t * tps)
        assert [int(m.positions[0, 0]) for m in metas] == [start + round(t * tps) for t in (0.0, 2.0, 10.0)]
        assert all(int(m.positions[0].min()) == int(m.positions[0].max()) for m in metas)
        assert int(metas[0].positions[1].min()) == start and int(metas[0].positions[2].min()) == start
    else:
        flat = torch.cat([m.positions[0] for m in metas])
        assert torch.equal(flat, torch.arange(start, start + flat.numel()))
    # cached slots and positions are different counters once time jumps (Qwen) or in general
    assert session.stats().tokens_stored == sum(m.tokens for m in metas)
    assert engine.backend.model.model.__dict__.get("rope_deltas") is None


def test_full_window_stream_equals_plain_forward(engine):
    frames = make_frames(8)
    times = [0.5 * i for i in range(8)]
    session = stream(engine, frames, times, window=64)
    ids, qpos = question_parts(session)
    logits, _ = reference_forward(session, frames, ids, qpos)
    ours = first_logits(session, QUESTION)
    torch.testing.assert_close(ours, logits[-1], atol=ATOL, rtol=0)
    assert engine.backend.model.model.__dict__.get("rope_deltas") is None


def first_logits(session, question, blocks=None):
    """The logits after the question prompt, as ask() computes them."""
    backend = session.backend
    ids, qpos = question_parts(session, question)
    from streamvlm.runtime.context import concat_layers

    metas = session.blocks.metas() if blocks is None else blocks
    stored = session.blocks.load(m.id for m in metas)
    cache = backend.new_cache(concat_layers([session.sink.kv, *(b.layers for b in stored)]))
    hidden = backend.forward(backend.question_embeds(ids), qpos, cache)
    return backend.logits(hidden[-1:])[0]


def test_sliding_window_kv_equals_masked_reference(engine):
    frames = make_frames(10)
    times = [0.5 * i for i in range(10)]
    window = 2 * session_chunk(engine)  # two blocks visible while encoding
    session = stream(engine, frames, times, window=window)
    metas = session.blocks.metas()
    assert len(metas) >= 4

    def visible(block_id):
        earlier = [m for m in metas if m.id < block_id]
        return [m.id for m in recent_by_frames(earlier, window)]

    ids, qpos = question_parts(session)
    length = len(session.sink.ids) + sum(m.tokens for m in metas) + qpos.shape[1]
    mask = block_mask(session, length, visible, [m.id for m in metas])
    _, cache = reference_forward(session, frames, ids, qpos, mask=mask)
    ranges = slot_ranges(session)
    for block in session.blocks.load(m.id for m in metas):
        b0, b1 = ranges[block.id]
        for layer, (k, v) in enumerate(block.layers):
            torch.testing.assert_close(k, cache.layers[layer].keys[0, :, b0:b1], atol=ATOL, rtol=0)
            torch.testing.assert_close(v, cache.layers[layer].values[0, :, b0:b1], atol=ATOL, rtol=0)
    # and the window really mattered: an unmasked forward gives different KV for the last block
    _, full_cache = reference_forward(session, frames, ids, qpos)
    last = metas[-1].id
    b0, b1 = ranges[last]
    assert not torch.allclose(
        session.blocks.load([last])[0].layers[-1][1], full_cache.layers[-1].values[0, :, b0:b1], atol=1e-3
    )


def session_chunk(engine) -> int:
    return engine.backend.default_chunk_frames


def test_ask_matches_plain_forward_and_greedy_decode(engine):
    frames = make_frames(6)
    times = [0.5 * i for i in range(6)]
    session = stream(engine, frames, times, window=64)
    ids, qpos = question_parts(session)
    steps = 6
    # stop tokens off, so the random model produces a full-length answer to compare
    answer = session.ask(QUESTION, max_new_tokens=steps, stop_token_ids=())
    assert len(answer.token_ids) == steps and answer.finish_reason == "length"
    # reference: greedy decoding by re-running the plain forward over the growing sequence
    generated: list[int] = []
    for _ in range(steps):
        positions = torch.cat(
            [qpos, session.backend.text_positions(int(qpos[0, -1]) + 1, len(generated))], dim=1
        )
        logits, _ = reference_forward(session, frames, ids + generated, positions)
        if not generated:
            torch.testing.assert_close(first_logits(session, QUESTION), logits[-1], atol=ATOL, rtol=0)
        generated.append(int(torch.argmax(logits[-1])))
    assert answer.token_ids == generated
    assert answer.text == session.backend.tokenizer.decode(generated, skip_special_tokens=True)
    assert [b.id for b in answer.blocks] == [m.id for m in session.blocks.metas()]
    assert answer.timings.ttft_s > 0 and answer.timings.total_s >= answer.timings.ttft_s


def test_dropping_a_block_equals_masking_it_out(engine):
    frames = make_frames(8)
    times = [0.5 * i for i in range(8)]
    session = stream(engine, frames, times, window=64)
    metas = session.blocks.metas()
    dropped = metas[1].id
    kept = [m for m in metas if m.id != dropped]
    ids, qpos = question_parts(session)
    length = len(session.sink.ids) + sum(m.tokens for m in metas) + qpos.shape[1]
    mask = block_mask(session, length, lambda b: [m.id for m in metas if m.id < b], [m.id for m in kept])
    logits, _ = reference_forward(session, frames, ids, qpos, mask=mask)
    ours = first_logits(session, QUESTION, blocks=kept)
    torch.testing.assert_close(ours, logits[-1], atol=ATOL, rtol=0)
    # and through the public path
    stream_ = session.ask_stream(QUESTION, blocks=[m.id for m in kept], max_new_tokens=1, stop_token_ids=())
    list(stream_)
    assert stream_.answer.token_ids == [int(torch.argmax(logits[-1]))]
    assert dropped not in [b.id for b in stream_.answer.blocks]
    full = first_logits(session, QUESTION)
    assert not torch.allclose(full, ours, atol=1e-3), "dropping a block should change the answer logits"
