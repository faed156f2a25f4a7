"""The retrieval loss trains exactly the vectors a session retrieves with, toward the right blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_objects import world_with  # noqa: E402

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.retrieval.summaries import block_summary
from streamvlm.runtime.context import concat_layers
from streamvlm.runtime.session import DEFAULT_SYSTEM_PROMPT
from streamvlm.synth import COLOURS, SHAPES
from streamvlm.synth.events import Event
from streamvlm.train.batches import Sample, collate, encode_sample, pop_object_targets
from streamvlm.train.config import TrainConfig
from streamvlm.train.loop import build_trainee, save
from streamvlm.train.retrieval import RetrievalLoss, patch_contents
from streamvlm.train.synth_task import FINETUNE_CURRICULUM, VOCABULARY, object_labels, query_key, synth_sample


def _sample(seed: int = 5) -> Sample:
    return synth_sample(np.random.default_rng(seed), 1.0, FINETUNE_CURRICULUM)


@pytest.mark.parametrize("query_context", ["window", "sink"])
def test_training_vectors_are_the_sessions_retrieval_vectors(tmp_path, query_context):
    """Queries and patch summaries from the training forward equal what a session streaming
    the same clip indexes and searches with (``block_summary``, ``question_queries``), the
    question read over the whole clip (a window holding it all) or over the sink alone."""
    backend = build_trainee(VOCABULARY, TrainConfig(), seed=0)
    loss = RetrievalLoss(backend.model, query_context)
    sample = _sample()
    batch = collate([encode_sample(backend, DEFAULT_SYSTEM_PROMPT, sample)], backend.tokenizer.pad_token_id)
    pop_object_targets(batch)
    backend.model.eval()(**batch)  # with gradients, as in training (no dropout in this model)
    # hooks keep projections only with gradients on, as in training (the sink forward too)
    queries, summaries, counts = loss.vectors(
        batch["input_ids"], batch["labels"], batch["video_grid_thw"], batch["position_ids"]
    )
    save(backend, tmp_path, {})
    engine = StreamVLM.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    b = engine.backend
    session = engine.new_session(memory=MemoryConfig(window=64, host_codec="identity", disk_codec="identity"))
    session.add_frames(zip(sample.frames, sample.times, strict=True))
    blocks = session.blocks.load(m.id for m in session.blocks.metas())
    assert counts == [len(blocks)]
    indexed = torch.stack([block_summary(b, x.layers, x.meta.positions).flatten() for x in blocks])
    torch.testing.assert_close(summaries.detach(), indexed, atol=1e-4, rtol=0)
    ids = b.prompt_parts(session.system_prompt, sample.question).question
    context = (
        [session.sink.kv, *(x.layers for x in blocks)] if query_context == "window" else [session.sink.kv]
    )
    cache = b.new_cache(concat_layers(context))
    searched = b.question_queries(
        b.question_embeds(ids), b.text_positions(session.next_position, len(ids)), cache
    )
    torch.testing.assert_close(queries[0].detach(), searched.flatten(), atol=1e-4, rtol=0)


def test_query_keys_name_the_object_a_question_is_about():
    circle = Event(0, "circle", "red", 3, 0, 2, 1.0, 48, ((0, 0),) * 2)
    world = world_with(circle, seconds=2.0)
    from streamvlm.synth.questions import make_questions

    keys = {q.family: query_key(world, q) for q in make_questions(world, world.end_time, 0)}
    assert keys["colour_of_shape"] == keys["digit_of_shape"] == (0, SHAPES.index("circle"))
    assert keys["shape_of_colour"] == (1, COLOURS.index("red"))
    assert keys.get("now") is None


def test_patch_contents_and_the_loss_favour_matching_patches():
    # two rows: 2 patches of 2 tokens, then 1 patch; instances 0 (patch 0), 1 (patch 1), 2 (patch 2)
    object_of_token = torch.tensor([0, -1, -1, 1, 2, 2])
    classes = torch.tensor([[0, 3, 0], [1, 4, 0], [0, 5, 0]])
    contents = patch_contents(object_of_token, classes, [2, 1])
    assert contents.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    # a question keyed on shape 0 matches patches 0 and 2 (one in its clip, one in another)
    matches = (contents & (classes[:, 0] == 0)).any(-1)
    assert matches.tolist() == [True, False, True]


def test_a_step_on_the_retrieval_loss_lowers_it():
    backend = build_trainee(VOCABULARY, TrainConfig(), seed=0)
    model = backend.model.train()
    loss_fn = RetrievalLoss(model)
    samples = [_sample(seed) for seed in range(6)]
    assert any(s.query_key is not None for s in samples)
    batch = collate(
        [encode_sample(backend, DEFAULT_SYSTEM_PROMPT, s) for s in samples], backend.tokenizer.pad_token_id
    )
    targets = pop_object_targets(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def step_loss():
        model(**batch)
        return loss_fn.loss(batch, *targets)

    before = step_loss()
    assert before is not None and torch.isfinite(before)
    optimizer.zero_grad()
    before.backward()
    k_grad = model.model.language_model.layers[0].self_attn.k_proj.weight.grad
    assert k_grad is not None and k_grad.abs().sum() > 0
    optimizer.step()
    assert step_loss().item() < before.item()


def test_object_labels_cover_what_query_keys_point_at():
    """A keyed sample's key is shown on at least one of its patches (the loss has a positive)."""
    for seed in range(20):
        s = _sample(seed)
        if s.query_key is None:
            continue
        column, value = s.query_key
        assert (s.objects.classes[:, column] == value).any()
    circle = Event(0, "circle", "red", None, 0, 2, 1.0, 48, ((0, 0),) * 2)
    assert object_labels(world_with(circle, seconds=2.0), 2).classes[0, 0] == SHAPES.index("circle")
