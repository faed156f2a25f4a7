"""Key de-rotation, block summaries and question queries against ground truth from the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.retrieval.summaries import block_summary


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava-ov"])
def engine(request) -> StreamVLM:
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8) for _ in range(n)]


def capture_pre_rope_keys(backend):
    """Hook every layer's k_proj: its output is the key before RoPE."""
    captured: dict[int, list[torch.Tensor]] = {}

    def hook(i):
        def save(_m, _inp, out):
            k = out[0].float().view(out.shape[1], backend.num_kv_heads, backend.head_dim).transpose(0, 1)
            captured.setdefault(i, []).append(k)

        return save

    handles = [
        layer.self_attn.k_proj.register_forward_hook(hook(i))
        for i, layer in enumerate(backend.language_model.layers)
    ]
    return captured, handles


def test_derotated_cached_keys_equal_pre_rope_projections(engine):
    backend = engine.backend
    session = engine.new_session(memory=MemoryConfig(window=64))
    captured, handles = capture_pre_rope_keys(backend)
    try:
        session.add_frames(
            (f, 3.0 * i) for i, f in enumerate(frames(4))
        )  # times far apart: big time positions
    finally:
        for h in handles:
            h.remove()
    block = session.blocks.load([session.blocks.metas()[-1].id])[0]
    for layer, (keys, _) in enumerate(block.layers):
        truth = captured[layer][-1]  # the last forward encoded this block
        derotated = backend.derotate_keys(keys, block.meta.positions)
        torch.testing.assert_close(derotated, truth, atol=1e-5, rtol=0)
        # and rotating back reproduces the cache
        torch.testing.assert_close(
            backend.rotate_keys(derotated, block.meta.positions), keys, atol=1e-5, rtol=0
        )
    summary = block_summary(backend, block.layers, block.meta.positions)
    expected = torch.stack([captured[i][-1].mean(dim=1).flatten() for i in range(backend.num_layers)])
    torch.testing.assert_close(summary, expected, atol=1e-5, rtol=0)
    assert summary.shape == (backend.num_layers, backend.num_kv_heads * backend.head_dim)
    torch.testing.assert_close(block.meta.summary, summary)


def test_summaries_do_not_depend_on_when_a_block_was_seen(engine):
    """The same frames later in the stream: rotated keys move with time, layer-0 summaries do not.

    (Deeper layers' keys depend on the context attended to, which differs by position.)
    """
    backend = engine.backend
    filler, clip = np.zeros((56, 84, 3), np.uint8), frames(2, seed=5)
    summaries, keys = [], []
    for gap in (1.0, 41.0):
        session = engine.new_session(memory=MemoryConfig(window=0))
        session.add_frames([(filler, 0.0), (filler, 0.5), (clip[0], gap), (clip[1], gap + 0.5)])
        meta = session.blocks.metas()[-1]
        summaries.append(meta.summary[0])
        keys.append(session.blocks.load([meta.id])[0].layers[0][0])
    torch.testing.assert_close(summaries[0], summaries[1], atol=1e-5, rtol=0)
    if backend.family == "qwen2.5-vl":  # time positions differ by 80; LLaVA's 1-D positions do not move
        assert not torch.allclose(keys[0], keys[1], atol=1e-3)


def test_question_queries_are_group_means_of_pre_rope_queries(engine):
    backend = engine.backend
    session = engine.new_session()
    session.add_frames((f, float(i)) for i, f in enumerate(frames(2)))
    ids = backend.prompt_parts(session.system_prompt, "where is the cat?").question
    embeds = backend.question_embeds(ids)
    positions = backend.text_positions(session.next_position, embeds.shape[0])
    captured = {}

    def save(i):
        return lambda _m, _inp, out: captured.__setitem__(i, out[0].float())

    handles = [
        layer.self_attn.q_proj.register_forward_hook(save(i))
        for i, layer in enumerate(backend.language_model.layers)
    ]
    try:
        backend.forward(embeds, positions, backend.new_cache(list(session.sink.kv)))
    finally:
        for h in handles:
            h.remove()
    queries = backend.question_queries(embeds, positions, backend.new_cache(list(session.sink.kv)))
    heads = backend.model.config.get_text_config().num_attention_heads
    groups = heads // backend.num_kv_heads
    for layer in range(backend.num_layers):
        q = captured[layer].view(-1, heads, backend.head_dim).mean(dim=0)  # [heads, hd]
        expected = torch.stack(
            [q[j * groups : (j + 1) * groups].mean(dim=0) for j in range(backend.num_kv_heads)]
        )
        torch.testing.assert_close(queries[layer], expected.flatten(), atol=1e-5, rtol=0)
