"""A chunk's image work runs outside the device lock, its pixels cross to the device as
uint8, and what is encoded stays bit-identical to the float32 path it replaces."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.ingest.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    LlavaOnevisionSpec,
    QwenPatchifier,
    QwenVisionSpec,
    level_table,
    normalise,
    patchify_qwen,
    prepare_llava_onevision,
    prepare_qwen,
    preprocess_llava_onevision,
    resize_bicubic,
    smart_resize,
)

# how long a test waits for a thread before calling it stuck: a deadlock guard, not a timing
STUCK_S = 300
GATE = (255, 0, 255)  # the top-left pixel of the frames whose preprocessing is held back


@pytest.fixture(scope="module")
def qwen() -> StreamVLM:
    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


def rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def float64_qwen(frames, spec: QwenVisionSpec) -> torch.Tensor:
    """The float32 pixel values as streamvlm made them before (and transformers makes them):
    the whole chunk rescaled in float64 and normalised in float32, then patchified."""
    tps, ps, ms = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    height, width = smart_resize(*frames[0].shape[:2], spec.factor, spec.min_pixels, spec.max_pixels)
    stack = np.stack([resize_bicubic(f, height, width) for f in frames])
    x = normalise(stack, spec.rescale_factor, spec.image_mean, spec.image_std).permute(0, 3, 1, 2)
    gt, gh, gw = len(frames) // tps, height // ps, width // ps
    x = x.reshape(gt, tps, 3, gh // ms, ms, ps, gw // ms, ms, ps).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * tps * ps * ps)


def float64_llava(frames, spec: LlavaOnevisionSpec) -> torch.Tensor:
    stack = np.stack([resize_bicubic(f, spec.image_size, spec.image_size) for f in frames])
    return normalise(stack, spec.rescale_factor, spec.image_mean, spec.image_std).permute(0, 3, 1, 2)


# ----- the numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean, std, factor",
    [
        (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 1 / 255),
        (SIGLIP_MEAN, SIGLIP_STD, 1 / 255),
        ((0.1, 0.2, 0.3), (3, 2, 1), 0.7),
    ],
)
def test_the_level_table_is_normalise_of_every_level(mean, std, factor):
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    assert torch.equal(level_table(factor, mean, std), normalise(levels, factor, mean, std).T)


def test_float32_arithmetic_would_change_the_pixels_the_table_keeps():
    """Why a table and not float32 arithmetic on the device: rescaling by float32(1/255)
    rounds hundreds of CLIP levels differently from transformers' float64 rescale."""
    reference = level_table(1 / 255, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    x = torch.arange(256, dtype=torch.float32)[None].expand(3, 256)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None], torch.tensor(OPENAI_CLIP_STD)[:, None]
    multiplied = (x * torch.tensor(1 / 255, dtype=torch.float32) - mean) / std
    assert int((multiplied != reference).sum()) == 325
    divided = (x / 255 - mean) / std  # happens to agree for 1/255, but not for every rescale factor
    assert torch.equal(divided, reference)


@pytest.mark.parametrize("size", [(720, 1280), (61, 97), (56, 56)])
def test_qwen_pixels_are_those_of_the_float64_path(size):
    spec = QwenVisionSpec.video(max_pixels=256 * 28 * 28)
    frames = [rgb(*size, seed) for seed in (1, 2)]
    prepared = prepare_qwen(frames, spec)
    assert prepared.levels.dtype == torch.uint8
    assert torch.equal(prepared.normalised(), float64_qwen(frames, spec))
    pixels, grid = patchify_qwen(frames, spec)
    assert torch.equal(pixels, float64_qwen(frames, spec)) and grid == prepared.grid


def test_llava_pixels_are_those_of_the_float64_path_in_any_dtype():
    spec = LlavaOnevisionSpec()
    frames = [rgb(720, 1280, 3), rgb(33, 40, 4)]
    reference = float64_llava(frames, spec)
    prepared = prepare_llava_onevision(frames, spec)
    assert torch.equal(preprocess_llava_onevision(frames, spec), reference)
    # normalised straight into bf16: what casting the float32 pixels gives
    assert torch.equal(prepared.normalised(dtype=torch.bfloat16), reference.to(torch.bfloat16))


def test_uint8_pixels_are_a_quarter_of_the_float32_bytes():
    prepared = prepare_qwen([rgb(720, 1280, 5)] * 2, QwenVisionSpec.video(max_pixels=256 * 28 * 28))
    floats = prepared.normalised()
    assert prepared.nbytes == 336 * 588 * 3 * 2  # a 720p frame at the streaming budget, two frames
    assert floats.numel() * floats.element_size() == 4 * prepared.nbytes


# ----- the model ------------------------------------------------------------------------


def test_qwen_vision_tower_output_is_that_of_float32_pixels(qwen):
    backend = qwen.backend
    frames = [rgb(61, 97, 6), rgb(61, 97, 7)]
    chunk = backend.encode_frames(frames, [0.0, 0.5], video_start=3, next_position=3)
    pixels = float64_qwen(frames, backend.preprocess.spec)
    grid = torch.tensor([backend.prepare_frames(frames).grid])
    before = torch.cat(backend.model.model.get_video_features(pixels, grid).pooler_output)
    assert torch.equal(chunk.embeds, before)


def test_llava_vision_tower_output_is_that_of_float32_pixels_cast_to_bf16():
    engine = StreamVLM.from_pretrained("tiny-llava-ov", device="cpu", dtype="bfloat16")
    backend = engine.backend
    frames = [rgb(48, 64, 8)]
    chunk = backend.encode_frames(frames, [0.0], video_start=3, next_position=3)
    pixels = float64_llava(frames, backend.preprocess.spec).to(backend.device, backend.dtype)
    with torch.inference_mode():
        before = backend.model.model.get_video_features(pixels[None]).pooler_output[0, :-1]
    assert torch.equal(chunk.embeds, before)


# ----- the lock -------------------------------------------------------------------------


class GatedPatchifier(QwenPatchifier):
    """Preprocessing that holds back frames marked with ``GATE`` until ``release`` is set."""

    def __init__(self, spec: QwenVisionSpec):
        super().__init__(spec)
        self.entered = threading.Event()
        self.release = threading.Event()

    def prepare(self, frames):
        if tuple(frames[0][0, 0]) == GATE:
            self.entered.set()
            assert self.release.wait(STUCK_S), "the test never released the gated preprocessing"
        return super().prepare(frames)


def stream(seed: int, gated: bool) -> list[tuple[np.ndarray, float]]:
    frames = [rgb(56, 84, seed + i) for i in range(4)]
    for frame in frames:
        frame[0, 0] = GATE if gated else (0, 0, 0)
    return [(frame, float(i)) for i, frame in enumerate(frames)]


def encoded(session) -> list:
    metas = session.blocks.metas()
    return [block.layers for block in session.blocks.load([m.id for m in metas])]


def assert_same_blocks(a, b):
    assert len(a) == len(b) > 0
    for layers_a, layers_b in zip(a, b, strict=True):
        for (k1, v1), (k2, v2) in zip(layers_a, layers_b, strict=True):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_one_sessions_preprocessing_never_holds_up_anothers_forward(qwen, monkeypatch):
    clip_a, clip_b = stream(10, gated=True), stream(20, gated=False)
    memory = MemoryConfig(window=8)
    # the blocks each stream makes alone, before anything is held back
    alone_a, alone_b = qwen.new_session(memory=memory), qwen.new_session(memory=memory)
    alone_a.add_frames(clip_a)
    alone_b.add_frames(clip_b)

    gate = GatedPatchifier(qwen.backend.preprocess.spec)
    monkeypatch.setattr(qwen.backend, "preprocess", gate)
    a, b = qwen.new_session(memory=memory), qwen.new_session(memory=memory)
    for frame, t in clip_a[:2]:
        a.push_frame(frame, t)  # a's encoder thread fills a chunk and starts preprocessing it
    assert gate.entered.wait(STUCK_S)

    other = threading.Thread(target=b.add_frames, args=(clip_b,))
    other.start()  # b's chunks: preprocessing, then vision and prefill under the device lock
    other.join(STUCK_S)
    assert not other.is_alive(), "session b waited for the device lock while a preprocessed"
    assert len(b.blocks.metas()) == 2 and len(a.blocks.metas()) == 0  # a still preprocesses its first

    gate.release.set()
    for frame, t in clip_a[2:]:
        a.push_frame(frame, t)
    assert a.drain(STUCK_S)
    assert a.background_errors == []
    assert_same_blocks(encoded(a), encoded(alone_a))
    assert_same_blocks(encoded(b), encoded(alone_b))
