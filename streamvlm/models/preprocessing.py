"""Build each family's frame preprocessing from its model and processor configs.

Policy (the mechanism is in ``streamvlm.ingest.preprocess``):

- patch geometry comes from the model's vision config: it is what the weights expect; a
  processor config that disagrees with it is rejected rather than silently overruled;
- normalisation comes from the checkpoint's processor configs, the video processor's
  (``video_preprocessor_config.json``) before the image processor's
  (``preprocessor_config.json``): a stream is a video;
- Qwen2.5-VL's per-frame pixel budget, first match wins: the caller's ``max_pixels``
  (``StreamVLM.from_pretrained(max_pixels=)``, ``--max-pixels``); the checkpoint's
  video processor config, in either form (``min_pixels``/``max_pixels`` or
  ``size.shortest_edge``/``size.longest_edge``); else the streaming default below. The
  image budget in ``preprocessor_config.json`` is never used for frames: it allows up to
  16,384 merged tokens a frame.
- LLaVA-OneVision frames are always the tower's square (384 px, 196 LLM tokens after
  its 2x2 pooling), so it takes no pixel budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from ..ingest.preprocess import (
    QWEN_VIDEO_MIN_PIXELS,
    LlavaOnevisionPreprocessor,
    LlavaOnevisionSpec,
    QwenPatchifier,
    QwenVisionSpec,
    llava_frame_side,
    qwen_pixel_limits,
)

# The streaming default of Qwen2.5-VL's per-frame pixel budget (docs/memory.md, "Cost per
# hour"): 256 merged 28x28 patches. A 720p frame becomes 336x588, 126 LLM tokens a frame
# instead of 360 at the video processor's 768x28x28: 26 GB of bf16 KV an hour at 1 fps
# for Qwen2.5-VL-7B rather than 74 GB. It lies inside the range the model saw video at
# (qwen-vl-utils' 128..768 x 28x28 per frame, which shrinks frames of long videos towards
# 128x28x28 through its total budget), and a stream is the longest video there is.
QWEN_STREAM_MAX_PIXELS = 256 * 28 * 28

# PIL's code for bicubic resampling: the only resize ``ingest.preprocess`` does, and that
# of every released Qwen2.5-VL and LLaVA-OneVision processor (their default and configs).
_BICUBIC = 3


def qwen_frame_budget(video_config: Mapping | None, max_pixels: int | None = None) -> dict[str, int]:
    """``{min_pixels, max_pixels}`` a Qwen2.5-VL frame is resized into (see the module docstring).

    An explicit ``max_pixels`` below the lower limit lowers that too, so that any budget
    of at least one merged patch can be asked for.

    Raises:
        ConfigError: ``max_pixels`` is not a whole number of at least 28 x 28.
    """
    asked = qwen_pixel_limits(video_config or {})
    low = int(asked.get("min_pixels", QWEN_VIDEO_MIN_PIXELS))
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 28 * 28:
            raise ConfigError(
                f"max_pixels must be a whole number of pixels per frame of at least 784 (one 28x28 patch), "
                f"got {max_pixels!r}; e.g. {QWEN_STREAM_MAX_PIXELS} (256 x 28 x 28)"
            )
        return {"min_pixels": min(low, max_pixels), "max_pixels": max_pixels}
    # a checkpoint that sets only a lower limit above the default keeps its lower limit
    high = int(asked.get("max_pixels", max(QWEN_STREAM_MAX_PIXELS, low)))
    return {"min_pixels": low, "max_pixels": high}


def qwen_preprocess_for(
    model_config,
    processor_config: Mapping,
    video_config: Mapping | None = None,
    max_pixels: int | None = None,
) -> QwenPatchifier:
    """The patchifier for a Qwen2.5-VL checkpoint (see the module docstring for where values come from).

    Raises:
        ConfigError: a processor config this preprocessing cannot follow, or a bad ``max_pixels``.
    """
    vision = model_config.vision_config
    geometry = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
    }
    for name, config in _configs(processor_config, video_config):
        _check_processor(config, name, family="Qwen2VL")
        _check_sizes(name, {key: config.get(key) for key in geometry}, geometry)
    merged = {**(processor_config or {}), **(video_config or {})}
    spec = QwenVisionSpec.from_config(vision, merged, **qwen_frame_budget(video_config, max_pixels))
    return QwenPatchifier(spec)


def llava_preprocess_for(
    model_config,
    processor_config: Mapping,
    video_config: Mapping | None = None,
    max_pixels: int | None = None,
) -> LlavaOnevisionPreprocessor:
    """The frame preprocessor for a LLaVA-OneVision checkpoint: square frames of the tower's size.

    Raises:
        ConfigError: a processor config this preprocessing cannot follow, or any ``max_pixels``
            (LLaVA-OneVision frames have one fixed size).
    """
    side = model_config.vision_config.image_size
    if max_pixels is not None:
        raise ConfigError(
            f"LLaVA-OneVision resizes every frame to its tower's {side}x{side}, so it takes no pixel "
            "budget; leave max_pixels (--max-pixels) unset for this model"
        )
    for name, config in _configs(processor_config, video_config):
        _check_processor(config, name, family="LlavaOnevision")
        _check_sizes(name, {"size": llava_frame_side(config)}, {"size": side})
    merged = {**(processor_config or {}), **(video_config or {})}
    spec = LlavaOnevisionSpec.from_config(model_config.vision_config, merged, image_size=side)
    return LlavaOnevisionPreprocessor(spec)


def _configs(processor_config: Mapping | None, video_config: Mapping | None) -> list[tuple[str, Mapping]]:
    """(file name, config) of each processor config the checkpoint has."""
    named = (("preprocessor_config.json", processor_config), ("video_preprocessor_config.json", video_config))
    return [(name, config) for name, config in named if config]


def _check_processor(config: Mapping, name: str, family: str) -> None:
    """Raise a one-line ``ConfigError`` where processor config ``name`` asks for what streamvlm does not do.

    ``family`` is the prefix of the processor classes whose preprocessing streamvlm reproduces.
    """
    for key in ("image_processor_type", "video_processor_type"):
        kind = config.get(key)
        if kind is not None and not str(kind).startswith(family):
            raise ConfigError(
                f"the checkpoint's {name} names {key} {kind!r}, but streamvlm preprocesses this model's frames "
                f"as {family}* processors do; fix {key} in {name} or use a checkpoint of a supported family"
            )
    if config.get("resample", _BICUBIC) != _BICUBIC:
        raise ConfigError(
            f"the checkpoint's {name} asks for resample={config['resample']}, but streamvlm resizes frames "
            f"bicubic (3) as the released checkpoints do; set resample to 3 in {name}"
        )
    for key in ("do_resize", "do_rescale", "do_normalize"):
        if config.get(key) is False:
            raise ConfigError(
                f"the checkpoint's {name} sets {key}: false, which streamvlm's preprocessing does not support; "
                f"remove it from {name}"
            )


def _check_sizes(name: str, asked: Mapping[str, int | None], tower: Mapping[str, int]) -> None:
    """Raise a one-line ``ConfigError`` where processor config ``name`` asks for a size the vision
    weights were not built for (``asked``: its values, None where it sets none)."""
    for key, value in tower.items():
        if asked.get(key) is not None and asked[key] != value:
            raise ConfigError(
                f"the checkpoint's {name} asks for {key} {asked[key]}, but its vision tower was built for "
                f"{value} (config.json's vision_config); make the two agree"
            )
