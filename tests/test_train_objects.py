"""The object loss that teaches the tiny model's vision tower to see: labels, pooling, speed-up."""

from __future__ import annotations

import numpy as np
import torch

from streamvlm.synth import COLOURS, SHAPES, World
from streamvlm.synth.events import Event
from streamvlm.train.batches import ObjectLabels, collate_objects
from streamvlm.train.config import TrainConfig
from streamvlm.train.loop import ObjectProbe, build_trainee, linear_patch_embedding, pretrain_vision
from streamvlm.train.synth_task import OBJECT_CLASSES, VOCABULARY, object_labels, vision_sample


def world_with(*events: Event, seconds: float = 4.0) -> World:
    size = events[0].size
    return World(0, seconds, events=events, scene_seconds=None, max_on_screen=2, object_size=size)


def test_object_labels_map_the_tokens_each_object_covers():
    # On the 4 x 4 grid of 28-px tokens: a 48-px circle at (0, 0) on frames 0-3 covers
    # 28 and 20 px of tokens 0 and 1 on each axis, so the top-left 2 x 2 of both temporal
    # patches; a 48-px square at (60, 60) on frames 2-3 covers 24 px of tokens 2 and 3.
    circle = Event(0, "circle", "red", 3, 0, 4, 1.0, 48, ((0, 0),) * 4)
    square = Event(1, "square", "blue", None, 2, 4, 1.0, 48, ((60, 60),) * 2)
    labels = object_labels(world_with(circle, square), 4)
    grid = labels.token_object.reshape(2, 4, 4)
    expected_first = np.full((4, 4), -1)
    expected_first[:2, :2] = 0
    np.testing.assert_array_equal(grid[0], expected_first)
    assert set(grid[1][:2, :2].ravel()) == {1} and set(grid[1][2:, 2:].ravel()) == {2}
    assert (grid[1] >= 0).sum() == 8
    red, blue = COLOURS.index("red"), COLOURS.index("blue")
    circle_cls = [SHAPES.index("circle"), red, 1 + 3]
    np.testing.assert_array_equal(labels.classes, [circle_cls, circle_cls, [SHAPES.index("square"), blue, 0]])


def test_a_small_object_still_labels_the_token_it_covers_most():
    # 16 x 16 px inside token (row 2, col 1): under half of it, but more than of any other
    dot = Event(0, "diamond", "green", None, 0, 2, 1.0, 16, ((30, 60),) * 2)
    labels = object_labels(world_with(dot, seconds=2.0), 2)
    assert np.flatnonzero(labels.token_object >= 0).tolist() == [2 * 4 + 1]  # row 2, col 1


def test_collated_object_ids_are_unique_across_the_batch():
    a = ObjectLabels(np.array([-1, 0, 0, 1]), np.array([[1, 2, 0], [3, 4, 5]]))
    b = ObjectLabels(np.array([0, -1]), np.array([[0, 1, 2]]))
    batch = collate_objects([a, b])
    assert batch["object_of_token"].tolist() == [-1, 0, 0, 1, 2, -1]
    assert batch["object_classes"].tolist() == [[1, 2, 0], [3, 4, 5], [0, 1, 2]]


def test_probe_classifies_the_mean_of_each_objects_tokens():
    backend = build_trainee(VOCABULARY, TrainConfig(), seed=0)
    visual = backend.model.model.visual
    probe = ObjectProbe(visual, backend.model.config.vision_config.out_hidden_size, OBJECT_CLASSES)
    frames, labels = vision_sample(np.random.default_rng(3))
    pixels, grid = backend.preprocess(frames)
    with torch.no_grad():
        tokens = visual(pixels, grid_thw=torch.tensor([grid])).pooler_output
        logits = probe.logits(torch.as_tensor(labels.token_object), len(labels.classes))
    assert len(labels.classes) == 1 and (labels.token_object >= 0).sum() >= 1
    mean = tokens[torch.as_tensor(labels.token_object) == 0].mean(0)
    expected = probe.heads(mean).split(OBJECT_CLASSES)
    for got, want in zip(logits, expected, strict=True):
        torch.testing.assert_close(got[0], want)


def test_linear_patch_embedding_equals_the_convolution_and_is_undone():
    backend = build_trainee(VOCABULARY, TrainConfig(), seed=0)
    visual = backend.model.model.visual
    pixels, grid = backend.preprocess(vision_sample(np.random.default_rng(5))[0])
    with torch.no_grad():
        conv = visual(pixels, grid_thw=torch.tensor([grid])).pooler_output
        with linear_patch_embedding(backend.model):
            linear = visual(pixels, grid_thw=torch.tensor([grid])).pooler_output
        again = visual(pixels, grid_thw=torch.tensor([grid])).pooler_output
    torch.testing.assert_close(linear, conv, atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(visual.patch_embed)
    torch.testing.assert_close(again, conv, atol=0, rtol=0)


def test_vision_pretraining_learns_colours():
    backend = build_trainee(VOCABULARY, TrainConfig(), seed=0)
    visual = backend.model.model.visual
    probe = ObjectProbe(visual, backend.model.config.vision_config.out_hidden_size, OBJECT_CLASSES)
    config = TrainConfig(vision_steps=40, vision_batch_size=16, warmup=5, lr=3e-3, log_every=1000)
    steps = pretrain_vision(
        backend, probe, vision_sample, config, np.random.default_rng(0), deadline=float("inf"), log=print
    )
    assert steps == 40
    views = [vision_sample(np.random.default_rng([9, i])) for i in range(32)]
    inputs = [backend.preprocess(f) for f, _ in views]
    targets = collate_objects([lab for _, lab in views])
    with torch.no_grad():
        visual(torch.cat([p for p, _ in inputs]), grid_thw=torch.tensor([g for _, g in inputs]))
        colour = probe.logits(targets["object_of_token"], len(targets["object_classes"]))[1]
    accuracy = (colour.argmax(-1) == targets["object_classes"][:, 1]).float().mean().item()
    assert accuracy >= 0.9, accuracy


def test_clip_times_jump_only_between_temporal_patches():
    from streamvlm.train.synth_task import clip_times

    rng = np.random.default_rng(0)
    assert clip_times(rng, 6) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert clip_times(rng, 4, scale=2.0) == [0.0, 2.0, 4.0, 6.0]
    times = clip_times(rng, 24, scale=1.5, gap_prob=1.0, max_gap=30.0)
    steps = np.diff(times)
    assert np.allclose(steps[0::2], 1.5)  # within a patch: the frame spacing
    assert (steps[1::2] >= 1.5 - 1e-9).all() and (steps[1::2] > 2.0).any()  # between patches: jumps


def test_the_long_curriculum_draws_up_to_24_frames_and_5_objects_with_labels():
    from streamvlm.train.synth_task import LONG_CURRICULUM, LONG_MAX_FRAMES, synth_sample

    rng = np.random.default_rng(3)
    samples = [synth_sample(rng, 1.0, LONG_CURRICULUM) for _ in range(40)]
    lengths = [len(s.frames) for s in samples]
    assert max(lengths) > 16 and max(lengths) <= LONG_MAX_FRAMES
    for s in samples:
        assert len(s.times) == len(s.frames) and list(s.times) == sorted(s.times)
        tokens = 16 * -(-len(s.frames) // 2)  # 16 merged tokens per 2-frame patch at 112 px
        assert len(s.objects.token_object) == tokens


def test_short_held_out_clips_are_deterministic_and_cover_every_family():
    from streamvlm.synth import FAMILIES
    from streamvlm.train.synth_task import short_clip_samples

    a, b = short_clip_samples(60), short_clip_samples(60)
    assert [(f, s.question, s.answer) for f, s in a] == [(f, s.question, s.answer) for f, s in b]
    assert {f for f, _ in a} == set(FAMILIES)
    assert all(4 <= len(s.frames) <= 16 and s.objects is None for _, s in a)


def test_late_and_count_curricula_start_late_and_count_more_often():
    from streamvlm.train.synth_task import CURRICULA, FINETUNE_CURRICULUM, synth_sample

    def draws(name: str) -> list:
        rng = np.random.default_rng(11)
        return [synth_sample(rng, 1.0, CURRICULA[name]) for _ in range(150)]

    def counting_share(samples) -> float:
        return np.mean([s.question.lower().startswith(("how many", "count")) for s in samples])

    finetune, count = draws("finetune"), draws("count")
    assert CURRICULA["finetune"] == FINETUNE_CURRICULUM
    assert max(s.times[0] for s in finetune) == 0.0
    late_starts = [s.times[0] for s in count if s.times[0] > 0]
    assert 0.3 < len(late_starts) / len(count) < 0.7 and max(late_starts) <= 3600.0
    # count_colour is drawn three times in ten (one in eight in finetune)
    assert counting_share(count) > 0.22 and counting_share(finetune) < 0.2


def test_the_cli_offers_every_curriculum():
    from streamvlm.cli import build_parser
    from streamvlm.train.synth_task import CURRICULA

    parser = build_parser()
    action = next(
        a
        for sub in parser._subparsers._group_actions
        for name, p in sub.choices.items()
        if name == "train-tiny"
        for a in p._actions
        if a.dest == "curriculum"
    )
    assert set(action.choices) == set(CURRICULA)
