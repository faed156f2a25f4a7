"""Retrieval inside a session: exactness at full top-k, per-layer contexts, filters, neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.errors import ConfigError
from streamvlm.retrieval.layered import LayeredIndex
from streamvlm.retrieval.select import select_blocks
from streamvlm.runtime.context import per_layer_context
from streamvlm.runtime.plan import AnswerPlan

Q = "what colour was the square?"


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava-ov"])
def engine(request) -> StreamVLM:
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def clip(n: int, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8), 0.5 * i) for i in range(n)]


def logits_and_tokens(session, **options):
    stream = session.ask_stream(Q, max_new_tokens=4, stop_token_ids=(), **options)
    list(stream)
    return stream


@pytest.mark.parametrize("selection", ["shared", "per_layer"])
def test_top_k_covering_every_block_equals_lossless(engine, selection):
    session = engine.new_session(memory=MemoryConfig(window=2, selection=selection))
    session.add_frames(clip(12))
    lossless = logits_and_tokens(session)
    retrieved = logits_and_tokens(session, top_k=1000)
    every = [m.id for m in session.blocks.metas()]
    assert retrieved.selection.layers == [every] * engine.backend.num_layers
    assert retrieved.answer.token_ids == lossless.answer.token_ids
    assert [b.id for b in retrieved.answer.blocks] == every


def reference_ragged_logits(backend, session, selection, question_ids, position):
    """Layer by layer with the model's own decoder layers, plain SDPA and an explicit mask per layer."""

    lm = backend.language_model
    blocks = {b.id: b for b in session.blocks.load(selection.union)}
    embeds = backend.question_embeds(question_ids)[None]
    positions = backend.text_positions(position, embeds.shape[1])
    cache = backend.new_cache(per_layer_context(session.sink.kv, blocks, selection.layers))
    pos = backend.model_position_ids(positions)
    rotary = lm.rotary_emb(embeds, pos)
    hidden, q = embeds, embeds.shape[1]
    with torch.inference_mode():
        for i, layer in enumerate(lm.layers):
            kv = cache.layers[i].keys.shape[2] + q
            allowed = torch.ones(q, kv, dtype=torch.bool).tril(kv - q)
            mask = torch.zeros(q, kv).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=rotary, cache=cache, use_cache=True
            )
        return backend.logits(lm.norm(hidden)[0, -1:])[0]


def test_per_layer_selection_gives_each_layer_its_own_blocks(engine):
    session = engine.new_session(memory=MemoryConfig(window=0, top_k=2, selection="per_layer"))
    session.add_frames(clip(16, seed=3))
    stream = logits_and_tokens(session)
    layers = stream.selection.layers
    assert all(len(ids) == 2 for ids in layers)
    assert stream.selection.union == sorted({b.id for b in stream.answer.blocks})
    # the first-token logits equal an explicit per-layer-masked forward over the same contexts
    backend = engine.backend
    ids = backend.prompt_parts(session.system_prompt, Q).question
    expected = reference_ragged_logits(backend, session, stream.selection, ids, session.next_position)
    assert stream.answer.token_ids[0] == int(torch.argmax(expected))

    blocks = {b.id: b for b in session.blocks.load(stream.selection.union)}
    cache = backend.new_cache(per_layer_context(session.sink.kv, blocks, layers))
    embeds = backend.question_embeds(ids)
    hidden = backend.forward(embeds, backend.text_positions(session.next_position, embeds.shape[0]), cache)
    torch.testing.assert_close(backend.logits(hidden[-1:])[0], expected, atol=1e-4, rtol=0)


def test_per_layer_contexts_of_different_lengths_match_the_reference(engine):
    """Force layers to attend to different numbers of blocks: the ragged attention path."""
    from streamvlm.retrieval.select import Selection

    session = engine.new_session(memory=MemoryConfig(window=64))
    session.add_frames(clip(10, seed=4))
    ids_all = [m.id for m in session.blocks.metas()]
    layers = [ids_all[:1], ids_all[1:]] + [ids_all] * (engine.backend.num_layers - 2)
    selection = Selection(layers)
    backend = engine.backend
    qids = backend.prompt_parts(session.system_prompt, Q).question
    expected = reference_ragged_logits(backend, session, selection, qids, session.next_position)

    blocks = {b.id: b for b in session.blocks.load(selection.union)}
    cache = backend.new_cache(per_layer_context(session.sink.kv, blocks, layers))
    assert cache.layers[0].keys.shape[2] != cache.layers[1].keys.shape[2]
    embeds = backend.question_embeds(qids)
    hidden = backend.forward(embeds, backend.text_positions(session.next_position, embeds.shape[0]), cache)
    torch.testing.assert_close(backend.logits(hidden[-1:])[0], expected, atol=1e-4, rtol=0)


def test_time_filter_restricts_blocks(engine):
    session = engine.new_session(memory=MemoryConfig(window=2, top_k=3))
    session.add_frames(clip(20))  # frames at 0.0 .. 9.5 s
    answer = session.ask(Q, since=2.0, until=5.0, max_new_tokens=1)
    assert answer.blocks and all(b.t_end >= 2.0 and b.t_start <= 5.0 for b in answer.blocks)
    lossless = session.ask(Q, since=2.0, until=5.0, top_k=None, max_new_tokens=1)
    assert all(2.0 <= b.t_end and b.t_start <= 5.0 for b in lossless.blocks)


def test_selection_modes_neighbours_and_always_with_a_real_index():
    index = LayeredIndex(2, 4)
    vectors = torch.eye(4).repeat(3, 1)[:10]  # block i points along axis i % 4
    for i, v in enumerate(vectors):
        index.add(i, torch.stack([v, v]))
    query = torch.stack([torch.eye(4)[1], torch.eye(4)[1]])  # matches blocks 1, 5, 9
    shared = select_blocks(index, query, list(range(10)), top_k=2)
    assert shared.layers == [[1, 5], [1, 5]]
    around = select_blocks(index, query, list(range(10)), top_k=1, neighbours=1, always={9})
    assert around.layers[0] == [0, 1, 2, 9]
    filtered = select_blocks(index, query, [4, 5, 6, 7], top_k=1)
    assert filtered.layers[0] == [5]
    split = torch.stack([torch.eye(4)[1], torch.eye(4)[2]])
    per_layer = select_blocks(index, split, list(range(10)), top_k=3, mode="per_layer")
    assert per_layer.layers[0] == [1, 5, 9]
    assert {2, 6} < set(per_layer.layers[1]) and len(per_layer.layers[1]) == 3  # third pick: any, score 0


def test_contiguous_positions_close_the_gaps(engine):
    backend = engine.backend
    session = engine.new_session(memory=MemoryConfig(window=64))
    session.add_frames((f, 7.0 * i) for i, (f, _) in enumerate(clip(8)))  # frames 7 s apart: big time gaps
    blocks = session.blocks.load([1, 3])
    step = backend.tokens_per_second * backend.temporal_patch_size if backend.position_dims == 3 else 1
    layout = dict(
        zip(
            [1, 3],
            backend.contiguous_positions([b.meta.positions for b in blocks], session.video_start),
            strict=True,
        )
    )
    start = session.video_start
    if backend.position_dims == 3:
        assert int(layout[1][0].min()) == start and int(layout[3][0].min()) == start + step
        assert torch.equal(layout[1][1:], blocks[0].meta.positions[1:])  # height/width rows kept
    else:
        n = blocks[0].meta.tokens
        assert torch.equal(layout[1][0], torch.arange(start, start + n))
        assert torch.equal(layout[3][0], torch.arange(start + n, start + 2 * n))
    for block in blocks:  # re-rotating to the same positions changes nothing; to new ones, only keys
        old = block.meta.positions
        same = backend.reposition_keys(block.layers, old, old)
        for (k, v), (k2, v2) in zip(block.layers, same, strict=True):
            torch.testing.assert_close(k2, k, atol=1e-5, rtol=0)
            assert v2 is v
        moved = backend.reposition_keys(block.layers, old, layout[block.id])
        back = backend.reposition_keys(moved, layout[block.id], old)
        torch.testing.assert_close(back[1][0], block.layers[1][0], atol=1e-4, rtol=0)


def test_contiguous_mode_answers_and_places_the_question_after_the_retrieved_blocks(engine):
    session = engine.new_session(memory=MemoryConfig(window=2, top_k=2, position_mode="contiguous"))
    session.add_frames((f, 5.0 * i) for i, (f, _) in enumerate(clip(16)))
    stream = logits_and_tokens(session)
    assert len(stream.answer.token_ids) == 4
    original = engine.new_session(memory=MemoryConfig(window=64, position_mode="original"))
    contiguous = engine.new_session(memory=MemoryConfig(window=64, position_mode="contiguous"))
    for s in (original, contiguous):
        s.add_frames(clip(6))
    a, b = logits_and_tokens(original), logits_and_tokens(contiguous)
    if engine.backend.position_dims == 1:  # a 1-D stream is already contiguous: nothing moves
        assert a.answer.token_ids == b.answer.token_ids


def test_positions_per_question_equal_the_configured_mode(engine):
    """``ask(positions=...)`` answers exactly as a session configured with that mode."""
    frames = [(f, 5.0 * i) for i, (f, _) in enumerate(clip(12))]
    streams = {}
    for mode in ("original", "contiguous"):
        session = engine.new_session(memory=MemoryConfig(window=2, top_k=2, position_mode=mode))
        session.add_frames(frames)
        streams[mode] = session
    for mode, other in (("contiguous", "original"), ("original", "contiguous")):
        configured = logits_and_tokens(streams[mode])
        overridden = logits_and_tokens(streams[other], positions=mode)
        assert overridden.selection.layers == configured.selection.layers
        assert overridden.answer.token_ids == configured.answer.token_ids
    with pytest.raises(ConfigError, match="positions"):
        streams["original"].ask(Q, positions="sideways")


def test_answer_window_leaves_the_rest_of_the_window_to_retrieval(engine):
    """With ``answer_window`` the answer always sees only the newest frames; the other window
    blocks compete with older ones. Per question it equals the configured option."""
    frames = clip(16)
    default = engine.new_session(memory=MemoryConfig(window=8, top_k=1))
    narrow = engine.new_session(memory=MemoryConfig(window=8, top_k=1, answer_window=2))
    for s in (default, narrow):
        s.add_frames(frames)
    metas = default.blocks.metas()
    chunk = metas[-1].frames
    window_ids = {m.id for m in metas[-(8 // chunk) :]}
    wide = logits_and_tokens(default)
    assert window_ids <= set(wide.selection.union) and len(wide.selection.union) <= len(window_ids) + 1
    small = logits_and_tokens(narrow)
    newest = {m.id for m in metas[-(2 // chunk) :]}
    assert newest <= set(small.selection.union)
    assert len(small.selection.union) <= len(newest) + 1  # one retrieved, maybe a newest one again
    overridden = logits_and_tokens(default, answer_window=2)
    assert overridden.selection.layers == small.selection.layers
    assert overridden.answer.token_ids == small.answer.token_ids
    only_retrieved = logits_and_tokens(default, answer_window=0)
    assert len(only_retrieved.selection.union) == 1
    with pytest.raises(ConfigError, match="answer_window"):
        default.ask(Q, answer_window=-1)
    with pytest.raises(ConfigError, match="answer_window"):
        MemoryConfig(answer_window=-2)


def test_query_context_sink_reads_the_question_alone(engine):
    """``query_context="sink"``: retrieval queries come from the question over the sinks
    only, so the recent window does not change which blocks are retrieved."""
    backend = engine.backend
    session = engine.new_session(memory=MemoryConfig(window=4, top_k=2, query_context="sink"))
    session.add_frames(clip(12))
    stream = logits_and_tokens(session)
    ids = backend.prompt_parts(session.system_prompt, Q).question
    embeds = backend.question_embeds(ids)
    positions = backend.text_positions(stream.position, embeds.shape[0])
    queries = backend.question_queries(embeds, positions, backend.new_cache(list(session.sink.kv)))
    expected = session.blocks.select(AnswerPlan.resolve(session.memory, top_k=2), lambda: queries)
    assert stream.selection.layers == expected.layers
    with pytest.raises(ConfigError, match="query_context"):
        MemoryConfig(query_context="everything")
