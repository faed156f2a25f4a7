"""Build each family's frame preprocessing from its model and processor configs.

Policy (the mechanism is in ``streamvlm.ingest.preprocess``):

- patch geometry comes from the model's vision config: it is what the weights expect;
- normalisation comes from the checkpoint's ``preprocessor_config.json``;
- Qwen2.5-VL's per-frame pixel budget comes from ``video_preprocessor_config.json`` when
  the checkpoint has one, else qwen-vl-utils' video budget (128-768 merged tokens per
  temporal patch), not the image budget in ``preprocessor_config.json``: a stream is a
  video, and the image budget would cost up to 1280 tokens per 2 frames.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..ingest.preprocess import (
    QWEN_VIDEO_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    LlavaOnevisionPreprocessor,
    LlavaOnevisionSpec,
    QwenPatchifier,
    QwenVisionSpec,
)


def qwen_preprocess_for(
    model_config, processor_config: Mapping, video_config: Mapping | None = None
) -> QwenPatchifier:
    """The patchifier for a Qwen2.5-VL checkpoint (see the module docstring for where values come from)."""
    budget = {"min_pixels": QWEN_VIDEO_MIN_PIXELS, "max_pixels": QWEN_VIDEO_MAX_PIXELS}
    for key in budget:
        if video_config and video_config.get(key):
            budget[key] = int(video_config[key])
    spec = QwenVisionSpec.from_config(model_config.vision_config, processor_config, **budget)
    return QwenPatchifier(spec)


def llava_preprocess_for(model_config, processor_config: Mapping) -> LlavaOnevisionPreprocessor:
    """The frame preprocessor for a LLaVA-OneVision checkpoint: square frames of the tower's size."""
    spec = LlavaOnevisionSpec.from_config(
        model_config.vision_config, processor_config, image_size=model_config.vision_config.image_size
    )
    return LlavaOnevisionPreprocessor(spec)
