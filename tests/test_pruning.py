"""Temporal-redundancy pruning (issue 5, section 2): what it keeps, and that it is exact.

- The pruner alone: a static scene keeps nothing new, a cut keeps everything, the
  reference is the last *kept* token (slow drift is caught), min_kept, merge, a new grid.
- In a session, both tiny architectures: a static scene keeps <= 20% of its tokens after
  the first chunk, a scene cut keeps all of them, stats count tokens seen and kept;
  with threshold > 1 the blocks and the answer are exactly the unpruned ones; with
  pruning on, the answer's logits equal the plain transformers forward over the sink,
  the kept visual tokens (at their original positions) and the question.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.errors import ConfigError
from streamvlm.memory.pruning import TemporalPruner
from streamvlm.runtime.context import concat_layers

MODELS = ["tiny-qwen2.5-vl", "tiny-llava-ov"]
QUESTION = "what colour was the square?"


def test_identical_patches_are_dropped_and_a_cut_keeps_all():
    pruner = TemporalPruner(0.95)
    x = torch.randn(2 * 16, 8)
    x[16:] = x[:16]  # the chunk's second patch repeats its first
    first = pruner.prune(x, (2, 4, 4))
    assert first.kept[:16].all() and not first.kept[16:].any()
    assert torch.equal(first.embeds, x[:16])
    again = pruner.prune(x[:16], (1, 4, 4))  # the same picture in the next chunk
    assert int(again.kept.sum()) == 1  # nothing new; one token so the chunk still has a block
    cut = pruner.prune(-x[:16], (1, 4, 4))  # a scene cut: every token differs
    assert cut.kept.all()


def test_reference_is_the_last_kept_token_so_drift_is_caught():
    """A token turning by 1 degree per chunk never differs 8.1 degrees (cosine 0.99) from
    the previous frame, but does from the last kept one every 9 chunks."""
    pruner = TemporalPruner(0.99)
    base, direction = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    kept = []
    for step in range(40):
        angle = torch.tensor(step * 0.0175)
        drifting = base * torch.cos(angle) + direction * torch.sin(angle)
        fresh = torch.randn(4)  # a token that always changes: the chunk never needs min-kept
        kept.append(bool(pruner.prune(torch.stack([drifting, fresh]), (1, 1, 2)).kept[0]))
    assert [s for s in range(1, 40) if kept[s]] == [9, 18, 27, 36]


def test_min_kept_keeps_the_least_redundant_tokens():
    pruner = TemporalPruner(0.5, min_kept=0.25)
    x = torch.randn(16, 8)
    pruner.prune(x, (1, 4, 4))
    y = x.clone()
    y[3] += 0.5 * torch.randn(8)  # the most changed tokens
    y[9] += 0.4 * torch.randn(8)
    out = pruner.prune(y, (1, 4, 4))
    assert int(out.kept.sum()) == 4
    similarity = torch.nn.functional.cosine_similarity(y, x, dim=-1)
    assert set(out.kept.nonzero().squeeze(-1).tolist()) == set(similarity.argsort()[:4].tolist())


def test_merge_averages_into_the_kept_token_of_the_same_chunk():
    pruner = TemporalPruner(0.9, mode="merge")
    a = torch.randn(4, 8)
    b = a + 0.01 * torch.randn(4, 8)
    out = pruner.prune(torch.cat([a, b]), (2, 2, 2))
    assert out.kept.tolist() == [True] * 4 + [False] * 4
    torch.testing.assert_close(out.embeds, (a + b) / 2)
    drop = TemporalPruner(0.9, mode="drop").prune(torch.cat([a, b]), (2, 2, 2))
    assert torch.equal(drop.embeds, a)


def test_a_new_grid_resets_the_references():
    pruner = TemporalPruner(0.9)
    pruner.prune(torch.ones(16, 8), (1, 4, 4))
    assert pruner.prune(torch.ones(9, 8), (1, 3, 3)).kept.all()
    with pytest.raises(ValueError, match="token grid"):
        pruner.prune(torch.ones(10, 8), (1, 3, 3))


@pytest.mark.parametrize(
    "options",
    [
        {"prune_threshold": float("nan")},
        {"prune_threshold": -1.0},
        {"prune_threshold": 0.9, "prune_mode": "squash"},
        {"prune_threshold": 0.9, "prune_min_kept": 1.5},
    ],
)
def test_bad_pruning_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="prune_"):
        MemoryConfig(**options)


# ----- in a session -------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODELS)
def engine(request) -> StreamVLM:
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def scene(seed: int, n: int, noise: float = 0.0, size: int = 112) -> list[np.ndarray]:
    """``n`` frames of one still picture, each with a little sensor noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size // 8, size // 8, 3)).astype(np.float32)
    picture = np.kron(base, np.ones((8, 8, 1), np.float32))
    return [np.clip(picture + rng.normal(0, noise, picture.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def run(engine, frames, **memory):
    session = engine.new_session(memory=MemoryConfig(window=64, **memory))
    for i, frame in enumerate(frames):
        session.add_frame(frame, 0.5 * i)
    session.flush()
    return session


def test_static_scene_keeps_under_a_fifth_after_its_first_chunk_and_a_cut_keeps_all(engine):
    chunk = engine.backend.default_chunk_frames
    static = scene(0, 8 * chunk, noise=2.0)
    cut = scene(1, chunk)
    session = run(engine, static + cut, prune_threshold=0.95)
    metas = session.blocks.metas()
    assert len(metas) == 9
    assert metas[0].kept.all()
    later = metas[1:8]
    seen = sum(m.kept.numel() for m in later)
    kept = sum(m.tokens for m in later)
    assert kept <= 0.2 * seen, f"static scene kept {kept} of {seen} tokens"
    assert metas[8].kept.all()  # the cut
    stats = session.stats()
    assert stats.visual_tokens_seen == sum(m.kept.numel() for m in metas)
    assert stats.visual_tokens_kept == sum(m.tokens for m in metas) == stats.tokens_stored
    assert stats.frames_seen == 9 * chunk
    # positions: the kept tokens keep theirs, and the question starts after the full chunks
    unpruned = run(engine, static + cut)
    for m, full in zip(metas, unpruned.blocks.metas(), strict=True):
        assert torch.equal(m.positions, full.positions[:, m.kept])
    assert session.next_position == unpruned.next_position


def test_threshold_above_one_is_exactly_the_unpruned_core(engine):
    frames = scene(0, 4 * engine.backend.default_chunk_frames)  # identical frames: cosine 1
    pruned = run(engine, frames, prune_threshold=1.0001)
    plain = run(engine, frames)
    for a, b in zip(
        pruned.blocks.load(m.id for m in pruned.blocks.metas()),
        plain.blocks.load(m.id for m in plain.blocks.metas()),
        strict=True,
    ):
        assert a.meta.kept.all()
        for (ka, va), (kb, vb) in zip(a.layers, b.layers, strict=True):
            assert torch.equal(ka, kb) and torch.equal(va, vb)
    options = dict(max_new_tokens=4, stop_token_ids=())
    assert pruned.ask(QUESTION, **options).token_ids == plain.ask(QUESTION, **options).token_ids


def test_pruned_answer_equals_plain_forward_over_the_kept_tokens(engine):
    backend = engine.backend
    chunk = backend.default_chunk_frames
    frames = scene(0, 3 * chunk, noise=2.0) + scene(5, 2 * chunk, noise=2.0)
    session = run(engine, frames, prune_threshold=0.95)
    metas = session.blocks.metas()
    assert 0 < sum(m.tokens for m in metas) < sum(m.kept.numel() for m in metas)  # some pruned
    # reference: the plain forward over embeddings, the visual ones from a fresh pruner
    pruner = TemporalPruner(0.95)
    visual, positions = [], []
    with torch.inference_mode():
        for i in range(0, len(frames), chunk):
            part = backend.encode_frames(
                frames[i : i + chunk],
                [0.5 * j for j in range(i, i + chunk)],
                video_start=session.video_start,
                next_position=session.video_start + sum(m.kept.numel() for m in metas[: i // chunk]),
            )
            kept = pruner.prune(part.embeds, part.grid)
            visual.append(kept.embeds)
            positions.append(part.positions[:, kept.kept])
        ids = backend.prompt_parts(session.system_prompt, QUESTION).question
        question = backend.question_embeds(ids)
        q_positions = backend.text_positions(session.next_position, question.shape[0])
        embeds = torch.cat([backend.embed_ids(session.sink.ids), *visual, question])
        all_positions = torch.cat([session.sink.positions, *positions, q_positions], dim=1)
        if backend.position_dims == 3:
            all_positions = all_positions[:, None]
        reference = backend.model(inputs_embeds=embeds[None], position_ids=all_positions).logits[0, -1]
    with torch.inference_mode():
        stored = session.blocks.load(m.id for m in metas)
        cache = backend.new_cache(concat_layers([session.sink.kv, *(b.layers for b in stored)]))
        hidden = backend.forward(question, q_positions, cache)
        ours = backend.logits(hidden[-1:])[0]
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=0)
    first = session.ask(QUESTION, max_new_tokens=1, stop_token_ids=()).token_ids[0]
    assert first == int(reference.argmax())


@pytest.mark.parametrize(
    "model, codec", [("tiny-qwen2.5-vl", "kivi2"), ("tiny-qwen2.5-vl", "vidkv"), ("tiny-llava-ov", "vidkv")]
)
def test_pruned_blocks_go_through_quantized_tiers_and_resume(model, codec, tmp_path):
    """Pruned blocks hold any number of tokens (one, here); the codecs and the disk tier take
    them, and a resumed session keeps its token counters."""
    from streamvlm.memory.checkpoint import SESSION_FILE
    from streamvlm.runtime.session import Session

    engine = StreamVLM.from_pretrained(model, device="cpu", dtype="float32")
    frames = scene(0, 8, noise=2.0) + scene(1, 4)
    memory = dict(
        device_bytes=0, host_codec=codec, disk_codec=codec, disk_dir=str(tmp_path / "s"), disk_flush_blocks=1
    )
    session = run(engine, frames, prune_threshold=0.95, **memory)
    tokens = [m.tokens for m in session.blocks.metas()]
    assert 1 in tokens and 16 in tokens
    # every block's checkpoint saved the counter past the whole chunk, pruned tokens included
    saved = json.loads((tmp_path / "s" / SESSION_FILE).read_text())
    assert saved["next_position"] == session.next_position
    before = session.stats()
    assert session.ask(QUESTION, max_new_tokens=2).text is not None
    session.close()
    resumed = Session.resume(tmp_path / "s", engine)
    after = resumed.stats()
    assert (after.visual_tokens_seen, after.visual_tokens_kept) == (
        before.visual_tokens_seen,
        before.visual_tokens_kept,
    )
    assert [m.tokens for m in resumed.blocks.metas()] == tokens
    assert resumed.ask(QUESTION, max_new_tokens=2).text is not None
    resumed.close()
