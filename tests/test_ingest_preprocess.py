"""Preprocessing against transformers' own (PIL) image processors and smart_resize."""

from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil, Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from streamvlm.errors import ConfigError, InvalidFrameError
from streamvlm.ingest import (
    QWEN_VIDEO_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    LlavaOnevisionPreprocessor,
    LlavaOnevisionSpec,
    QwenPatchifier,
    QwenVisionSpec,
    patchify_qwen,
    preprocess_llava_onevision,
    smart_resize,
)
from streamvlm.ingest.preprocess import llava_frame_side, qwen_pixel_limits

RNG = np.random.default_rng(0)


def image(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------- smart_resize

SIDES = [1, 5, 13, 14, 27, 28, 29, 41, 56, 99, 100, 240, 320, 426, 568, 720, 1000, 1080, 1920, 4000]


@pytest.mark.parametrize(
    "limits",
    [
        {},
        {"min_pixels": QWEN_VIDEO_MIN_PIXELS, "max_pixels": QWEN_VIDEO_MAX_PIXELS},
        {"min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28},
    ],
)
def test_smart_resize_equals_transformers(limits):
    checked = 0
    for h, w in itertools.product(SIDES, SIDES):
        if max(h, w) / min(h, w) > 200:
            continue
        ours = smart_resize(h, w, 28, **limits)
        assert ours == hf_smart_resize(h, w, 28, **limits), (h, w)
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0
        checked += 1
    assert checked > 350


def test_smart_resize_budgets_and_examples():
    assert smart_resize(240, 426) == (252, 420)  # rounded to 28s, within budget
    assert smart_resize(10, 10) == (56, 56)  # scaled up to min_pixels
    h, w = smart_resize(2160, 3840)  # 4K: scaled down by the pixel budget
    assert (h, w) == (728, 1316) and h * w <= 28 * 28 * 1280
    assert abs(w / h - 3840 / 2160) < 0.05


def test_smart_resize_huge_frame_downscaled_within_max_pixels():
    for h, w in [(20_000, 30_000), (50_000, 400), (400, 50_000), (100_000, 100_000)]:
        rh, rw = smart_resize(h, w)
        assert rh * rw <= 28 * 28 * 1280 and rh % 28 == 0 and rw % 28 == 0
        assert (rh, rw) == hf_smart_resize(h, w)
    # And a real 24-megapixel frame through the patchifier: it becomes ~1M pixels.
    big = np.zeros((4000, 6000, 3), np.uint8)
    pixel_values, (t, gh, gw) = patchify_qwen([big, big])
    assert (t, gh * 14, gw * 14) == (1, *smart_resize(4000, 6000)) == (1, 812, 1204)
    assert gh * gw * 14 * 14 <= 28 * 28 * 1280
    assert pixel_values.shape == (gh * gw, 3 * 2 * 14 * 14)


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(InvalidFrameError, match="aspect ratio 201, above Qwen2-VL's limit of 200") as e:
        smart_resize(10, 2010)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        hf_smart_resize(10, 2010)  # transformers rejects it too
    with pytest.raises(InvalidFrameError, match="empty side"):
        smart_resize(0, 10)


@pytest.mark.skipif(
    importlib.util.find_spec("qwen_vl_utils") is None, reason="qwen-vl-utils is not installed"
)
def test_smart_resize_equals_qwen_vl_utils():
    try:
        from qwen_vl_utils.vision_process import smart_resize as qvu_smart_resize
    except Exception as e:  # it imports torchvision at module top, which fails on these machines
        pytest.skip(f"qwen_vl_utils cannot be imported here ({type(e).__name__})")
    for h, w in itertools.product(SIDES[3:], SIDES[3:]):  # sides >= 14: it differs below factor/2
        if max(h, w) / min(h, w) <= 200:
            assert smart_resize(h, w) == qvu_smart_resize(h, w), (h, w)


# ------------------------------------------------------------------- Qwen2-VL patches


def hf_qwen(img, processor=None):
    processor = processor or Qwen2VLImageProcessorPil()
    out = processor(images=[img], return_tensors="pt")
    return out["pixel_values"], tuple(out["image_grid_thw"][0].tolist())


@pytest.mark.parametrize("size", [(100, 150), (240, 426), (568, 320), (37, 1001), (720, 1280)])
def test_qwen_image_tiled_equals_image_processor(size):
    img = image(*size)
    ref, ref_grid = hf_qwen(img)
    pixel_values, grid = patchify_qwen([img, img], QwenVisionSpec())
    assert grid == ref_grid
    assert pixel_values.dtype == torch.float32
    torch.testing.assert_close(pixel_values, ref, rtol=0, atol=0)  # bit-identical


def test_qwen_spec_from_image_processor_and_configs():
    processor = Qwen2VLImageProcessorPil(min_pixels=8 * 28 * 28, max_pixels=64 * 28 * 28)
    spec = QwenVisionSpec.from_image_processor(processor)
    assert (spec.min_pixels, spec.max_pixels) == (8 * 28 * 28, 64 * 28 * 28)
    assert spec.image_mean == pytest.approx(processor.image_mean)
    img = image(480, 640)
    ref, ref_grid = hf_qwen(img, processor)
    pixel_values, grid = QwenPatchifier(spec)([img, img])
    assert grid == ref_grid and gridsize(grid) <= 64 * 4
    torch.testing.assert_close(pixel_values, ref, rtol=0, atol=0)

    # preprocessor_config.json of Qwen2.5-VL, and a vision config that wins on geometry.
    json_config = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
                   "temporal_patch_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip

    class Vision:
        patch_size, temporal_patch_size, spatial_merge_size = 16, 2, 2

    spec = QwenVisionSpec.from_config(Vision(), json_config, max_pixels=QWEN_VIDEO_MAX_PIXELS)
    assert (spec.patch_size, spec.merge_size, spec.factor) == (16, 2, 32)
    assert (spec.min_pixels, spec.max_pixels) == (3136, QWEN_VIDEO_MAX_PIXELS)
    assert QwenVisionSpec.video().min_pixels == 128 * 28 * 28


@pytest.mark.parametrize(
    "config",
    [
        {"size": {"shortest_edge": 3136, "longest_edge": 256 * 28 * 28}},  # transformers 5
        {"min_pixels": 3136, "max_pixels": 12845056},  # the released Qwen2.5-VL preprocessor_config.json
        {"size": {"shortest_edge": 56 * 56, "longest_edge": 768 * 28 * 28}, "max_pixels": 256 * 28 * 28},
        {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}, "min_pixels": 4 * 28 * 28},
    ],
    ids=["size", "min-max", "both-max", "both-min"],
)
def test_qwen_pixel_limits_read_both_forms_as_transformers_does(config):
    """Either form, and where both are given the same winner as transformers' processors."""
    hf_size = Qwen2VLImageProcessorPil(**config).size
    assert qwen_pixel_limits(config) == {
        "min_pixels": hf_size.shortest_edge,
        "max_pixels": hf_size.longest_edge,
    }
    spec = QwenVisionSpec.from_config(processor_config=config)
    assert (spec.min_pixels, spec.max_pixels) == (hf_size.shortest_edge, hf_size.longest_edge)


def test_llava_frame_side_forms():
    released = {"size": {"height": 384, "width": 384}, "crop_size": {"height": 384, "width": 384},
                "image_grid_pinpoints": [[384, 384], [384, 768]]}  # fmt: skip
    assert llava_frame_side(released) == 384
    assert llava_frame_side({"size": {"shortest_edge": 336}}) == 336
    assert llava_frame_side({}) is None and llava_frame_side(None) is None
    assert LlavaOnevisionSpec.from_config(processor_config=released).image_size == 384


def gridsize(grid):
    return grid[1] * grid[2] // 4


def reference_rows(frames_chw: np.ndarray, tps=2, ps=14, ms=2) -> np.ndarray:
    """Row by row, the layout Qwen2.5-VL's vision tower reads, written out with loops."""
    n, c, h, w = frames_chw.shape
    rows = []
    for t in range(n // tps):
        for bh in range(h // (ps * ms)):
            for bw in range(w // (ps * ms)):
                for mh in range(ms):
                    for mw in range(ms):
                        y, x = (bh * ms + mh) * ps, (bw * ms + mw) * ps
                        block = frames_chw[t * tps : (t + 1) * tps, :, y : y + ps, x : x + ps]  # (T, C, P, P)
                        rows.append(block.transpose(1, 0, 2, 3).reshape(-1))  # (C, T, P, P)
    return np.stack(rows)


def test_qwen_different_frames_layout_against_loop_reference():
    frames = [image(60, 90) for _ in range(4)]  # two temporal patches
    spec = QwenVisionSpec()
    pixel_values, grid = patchify_qwen(frames, spec)
    h, w = smart_resize(60, 90)
    assert grid == (2, h // 14, w // 14)
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC)) for f in frames]
    )
    mean, std = np.array(spec.image_mean, np.float32), np.array(spec.image_std, np.float32)
    normed = ((resized.astype(np.float64) / 255).astype(np.float32) - mean) / std
    expected = reference_rows(normed.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(pixel_values.numpy(), expected, rtol=0, atol=1e-6)


def test_qwen_two_frames_equal_the_processor_per_frame_halves():
    # Independent of our reshape: each frame's own processor output, tiled along T,
    # must be the T=0 / T=1 halves of our temporal patch.
    a, b = image(112, 168), image(112, 168)
    pixel_values, grid = patchify_qwen([a, b])
    ref_a, grid_a = hf_qwen(a)
    ref_b, _ = hf_qwen(b)
    assert grid == grid_a
    ours = pixel_values.reshape(-1, 3, 2, 14, 14)
    torch.testing.assert_close(ours[:, :, 0], ref_a.reshape(-1, 3, 2, 14, 14)[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(ours[:, :, 1], ref_b.reshape(-1, 3, 2, 14, 14)[:, :, 0], rtol=0, atol=0)


def test_qwen_chunk_uses_the_first_frames_size():
    first, other = image(100, 150), image(300, 200)
    _, grid = patchify_qwen([first, other])
    assert grid == (1, *(s // 14 for s in smart_resize(100, 150)))


def test_qwen_feeds_the_real_vision_tower():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 48, "fullatt_block_indexes": [0], "window_size": 56},
        text_config={"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 300,
                     "rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]}},
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    pixel_values, grid = patchify_qwen([image(56, 84)] * 2, QwenVisionSpec.from_config(config.vision_config))
    with torch.no_grad():
        out = model.model.visual(pixel_values, grid_thw=torch.tensor([grid]))
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out
    assert tokens.shape == (grid[0] * grid[1] * grid[2] // 4, 48)


def test_qwen_rejects_bad_chunks():
    with pytest.raises(
        InvalidFrameError, match="needs a positive multiple of 2 frames, got 3; repeat the last"
    ):
        patchify_qwen([image(56, 56)] * 3)
    with pytest.raises(InvalidFrameError, match="frame 1 of the chunk is a float32 array"):
        patchify_qwen([image(56, 56), np.zeros((56, 56, 3), np.float32)])
    with pytest.raises(InvalidFrameError, match="pass an \\(H, W, 3\\) uint8 RGB array"):
        patchify_qwen([image(56, 56), np.zeros((56, 56, 4), np.uint8)])
    with pytest.raises(ConfigError, match="min_pixels 100 > max_pixels 10"):
        QwenVisionSpec(min_pixels=100, max_pixels=10)


# --------------------------------------------------------------------- LLaVA-OneVision


def test_llava_square_frames_equal_image_processor():
    frames = [image(200, 200), image(200, 200), image(384, 384)]
    processor = LlavaOnevisionImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # Several images per sample: no anyres tiling, pad-to-square (a no-op here), resize.
    ref = processor(images=[frames], return_tensors="pt")["pixel_values"][:, 0]
    spec = LlavaOnevisionSpec.from_config(processor_config=processor)
    assert spec == LlavaOnevisionSpec()  # SigLIP mean/std, 384
    ours = preprocess_llava_onevision(frames, spec)
    assert ours.shape == (3, 3, 384, 384)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_llava_non_square_frames_are_squashed_like_the_video_processor():
    frame = image(240, 426)
    ours = LlavaOnevisionPreprocessor(LlavaOnevisionSpec(image_size=64))([frame])
    resized = np.asarray(Image.fromarray(frame).resize((64, 64), Image.Resampling.BICUBIC))
    expected = ((resized.astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5
    np.testing.assert_allclose(ours[0].numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_llava_spec_from_config():
    class Vision:
        image_size = 336

    assert LlavaOnevisionSpec.from_config(Vision()).image_size == 336
    spec = LlavaOnevisionSpec.from_config(
        Vision(), {"size": {"height": 384, "width": 384}, "image_mean": [0.4] * 3}
    )
    assert (spec.image_size, spec.image_mean) == (384, (0.4, 0.4, 0.4))
    with pytest.raises(InvalidFrameError, match="empty list of frames"):
        preprocess_llava_onevision([])
    assert math.isclose(spec.rescale_factor, 1 / 255)
