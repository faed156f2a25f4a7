"""Frame preprocessing for the vision towers, without torchvision.

torchvision has no working CPU build on our machines, so the Hugging Face *video*
processors and qwen-vl-utils cannot be imported. This module reproduces what the
models expect, and the tests check it number for number against transformers' PIL
image processors:

- ``smart_resize``: transformers' Qwen2-VL ``smart_resize`` (the image and video
  processors share it).
- ``patchify_qwen``: resize (PIL bicubic, as ``Qwen2VLImageProcessorPil``), rescale by
  1/255 (in float64, cast to float32, as transformers does), normalise with the CLIP
  mean/std, and lay out patches as ``Qwen2_5_VLForConditionalGeneration.visual`` takes
  them: rows ordered (t, h-block, w-block, h-in-block, w-in-block), each row
  (channel, temporal, patch_y, patch_x). Same layout as ``Qwen2VLVideoProcessor``.
- ``preprocess_llava_onevision``: resize every frame to a square (bicubic), rescale,
  normalise (SigLIP mean/std 0.5), giving ``[F, 3, S, S]``, as LLaVA-OneVision's video
  processor does.

Both are two steps, so a runtime can do the first without the device lock and move 4x
fewer bytes to the device: ``prepare_qwen`` / ``prepare_llava_onevision`` resize and lay
the pixels out still as uint8 (``PreparedPixels``), and ``PreparedPixels.normalised``
copies them to a device and normalises them there. Normalising is a lookup in a
``level_table`` of the 256 values each channel's uint8 level becomes, computed once the
way transformers computes every pixel, so the result is bit-identical to it with no
per-pixel float64 work (float32 arithmetic is not: ``x * float32(1/255)`` rounds 325 of
the 768 CLIP levels differently).

The one intended difference from the HF video processors: they resize with torchvision
(bicubic + antialias on tensors), we resize with PIL (the image processors' path); the
two differ by a few grey levels at edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, InvalidFrameError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Qwen2-VL/2.5-VL pixel budgets per frame. Images: Qwen2VLImageProcessor's defaults.
# Video: Qwen2VLVideoProcessor's and qwen-vl-utils' VIDEO_MIN/MAX_PIXELS (a video frame
# gets fewer pixels than a still image so a clip fits in context).
QWEN_IMAGE_MIN_PIXELS = 56 * 56
QWEN_IMAGE_MAX_PIXELS = 28 * 28 * 1280
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN_IMAGE_MIN_PIXELS,
    max_pixels: int = QWEN_IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
    """The ``(height, width)`` Qwen2-VL resizes a ``height × width`` frame to.

    Both sides become multiples of ``factor`` (patch_size × merge_size), the pixel count
    is brought into ``[min_pixels, max_pixels]`` by one common scale (keeping the aspect
    ratio), and otherwise each side is rounded to the nearest multiple. Identical to
    transformers' ``smart_resize`` (``models/qwen2_vl/image_processing_pil_qwen2_vl.py``;
    the copy in ``image_processing_qwen2_vl.py`` imports torchvision).
    (qwen-vl-utils differs only for frames under ``factor / 2`` pixels on a side.)

    Raises ``InvalidFrameError`` for a non-positive side or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise InvalidFrameError(f"frame size {height}x{width} has an empty side; pass a frame at least 1x1")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise InvalidFrameError(
            f"frame {height}x{width} has aspect ratio {ratio:.0f}, above Qwen2-VL's limit of {MAX_ASPECT_RATIO}; "
            "crop or pad it to a less extreme shape"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_rgb(frame: Any, what: str = "frame") -> np.ndarray:
    """``frame`` as an ``(H, W, 3)`` uint8 array, or a one-line ``InvalidFrameError``."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = (
            f"{frame.dtype} array of shape {frame.shape}"
            if isinstance(frame, np.ndarray)
            else type(frame).__name__
        )
        raise InvalidFrameError(f"{what} is a {desc}; pass an (H, W, 3) uint8 RGB array")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidFrameError(f"{what} has shape {frame.shape}; pass a frame at least 1x1")
    return frame


def resize_bicubic(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bicubic resize of an ``(H, W, 3)`` uint8 frame, as transformers' PIL path.

    transformers converts uint8 arrays to PIL without rescaling, resizes and converts
    back to uint8, so doing the same here gives identical pixels.
    """
    if rgb.shape[:2] == (height, width):
        return rgb  # PIL returns an unchanged copy for a same-size resize
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def normalise(
    frames: np.ndarray, rescale_factor: float, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``(..., 3)`` uint8 → float32 ``(x * rescale_factor - mean) / std``.

    The order of operations and dtypes follow transformers (rescale in float64, cast to
    float32, normalise in float32), so results are bit-identical to its image
    processors rather than merely close.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float64)
    x = x.mul_(rescale_factor).to(torch.float32)
    return (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)


@lru_cache(maxsize=16)
def level_table(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float32 ``[3, 256]``: what ``normalise`` makes of each uint8 level in each channel.

    A pixel's normalised value depends only on its level and channel, so looking it up
    here equals ``normalise`` bit for bit, whatever the spec. Shared between callers:
    do not write to it.
    """
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3)
    return normalise(levels, rescale_factor, mean, std).T.contiguous()


@dataclass(frozen=True)
class PreparedPixels:
    """A chunk's frames resized and laid out as its vision tower takes them, still uint8.

    All the image work of a chunk, and none that needs the model: a runtime makes it
    before taking the device lock. ``levels`` has the final layout of the pixel values;
    its axis 1 splits into 3 equal channel-major parts (Qwen's rows are (channel,
    temporal, y, x); LLaVA's frames are (channel, y, x)), which is how ``normalised``
    finds each level's channel.
    """

    levels: torch.Tensor  # uint8, the pixel values' layout
    table: torch.Tensor  # float32 [3, 256], ``level_table`` of the spec
    grid: tuple[int, int, int] | None = None  # Qwen: (grid_t, grid_h, grid_w) in patches

    @property
    def nbytes(self) -> int:
        """Bytes ``normalised`` copies to the device (the float32 values would be 4x)."""
        return self.levels.numel() * self.levels.element_size()

    def normalised(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The pixel values on ``device`` (default: where ``levels`` are) in ``dtype``: the uint8
        levels are copied there, then normalised there by table lookup, bit-identical to
        normalising in float32 and casting to ``dtype`` afterwards."""
        levels = self.levels.to(device) if device is not None else self.levels
        table = self.table.to(levels.device).to(dtype)
        by_channel = levels.reshape(levels.shape[0], 3, -1)
        out = torch.empty(by_channel.shape, dtype=dtype, device=levels.device)
        for channel in range(3):
            # index_select with int32 indices: 4x faster on a CPU than indexing one flat table with int64
            index = by_channel[:, channel].reshape(-1).int()
            out[:, channel] = table[channel].index_select(0, index).view(out.shape[0], -1)
        return out.reshape(levels.shape)


def _table(spec) -> torch.Tensor:
    """The ``level_table`` of a Qwen or LLaVA spec."""
    return level_table(spec.rescale_factor, tuple(spec.image_mean), tuple(spec.image_std))


def _get(config: Any, key: str) -> Any:
    """``config[key]`` of a dict, or ``config.key`` of an object; None where it has none."""
    if config is None:
        return None
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def _overrides(config: Any, names: Mapping[str, str]) -> dict[str, Any]:
    """Pick ``{our_name: value}`` from an object or dict using ``{their_name: our_name}``."""
    out: dict[str, Any] = {}
    for theirs, ours in names.items():
        value = _get(config, theirs)
        if value is not None:
            out[ours] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


def _check_spec(spec) -> None:
    for name in ("patch_size", "temporal_patch_size", "merge_size", "image_size", "min_pixels", "max_pixels"):
        value = getattr(spec, name, 1)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{type(spec).__name__}.{name} must be a positive integer, got {value!r}")
    if getattr(spec, "min_pixels", 0) > getattr(spec, "max_pixels", 1):
        raise ConfigError(f"min_pixels {spec.min_pixels} > max_pixels {spec.max_pixels}; swap or fix them")
    if len(spec.image_mean) != 3 or len(spec.image_std) != 3 or min(spec.image_std) <= 0:
        raise ConfigError(
            f"image_mean/image_std need 3 values with std > 0, got {spec.image_mean} / {spec.image_std}"
        )


# ---------------------------------------------------------------------------- Qwen2-VL


def qwen_pixel_limits(processor_config: Mapping | Any) -> dict[str, int]:
    """The per-frame pixel limits a Qwen2-VL processor config asks for: ``{min_pixels, max_pixels}``,
    each only where the config sets it.

    Both forms the released checkpoints and transformers write are read: transformers 5's
    ``size: {"shortest_edge": min, "longest_edge": max}`` and the older top-level
    ``min_pixels`` / ``max_pixels``. Where a config has both, the top-level keys win, as
    in transformers' own Qwen2-VL image and video processors ("backward compatibility:
    override size with min_pixels and max_pixels").
    """
    limits = {}
    size = _get(processor_config, "size")
    if size is not None:
        limits.update(_overrides(size, {"shortest_edge": "min_pixels", "longest_edge": "max_pixels"}))
    limits.update(_overrides(processor_config, {"min_pixels": "min_pixels", "max_pixels": "max_pixels"}))
    return limits


@dataclass(frozen=True)
class QwenVisionSpec:
    """How Qwen2-VL / Qwen2.5-VL frames are resized, normalised and patchified.

    Defaults are ``Qwen2VLImageProcessor``'s (the Qwen2.5-VL checkpoints ship these):
    14-pixel patches, 2 frames per temporal patch, 2×2 merge, 56²…28²·1280 pixels per
    frame, CLIP mean/std. ``QwenVisionSpec.video()`` gives the per-frame budget the
    video processor and qwen-vl-utils use for video (128·28²…768·28²), which is what a
    stream should normally use: a chunk (one temporal patch) then costs 128…768 LLM
    tokens, against up to 1280 with the image budget.
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = QWEN_IMAGE_MIN_PIXELS
    max_pixels: int = QWEN_IMAGE_MAX_PIXELS
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        _check_spec(self)

    @property
    def factor(self) -> int:
        """Side multiple of a resized frame: one merged patch (28 pixels by default)."""
        return self.patch_size * self.merge_size

    @classmethod
    def video(cls, **overrides: Any) -> QwenVisionSpec:
        """The spec with qwen-vl-utils' per-frame video pixel budget."""
        return cls(**{"min_pixels": QWEN_VIDEO_MIN_PIXELS, "max_pixels": QWEN_VIDEO_MAX_PIXELS, **overrides})

    @classmethod
    def from_config(
        cls, vision_config: Any = None, processor_config: Mapping | Any = None, **overrides: Any
    ) -> QwenVisionSpec:
        """Build from a model's ``vision_config`` and/or a processor (config dict or object).

        ``processor_config`` may be a ``preprocessor_config.json`` or
        ``video_preprocessor_config.json`` dict, a ``Qwen2VLImageProcessor(Pil)`` or its
        ``to_dict()``; pixel limits are read by :func:`qwen_pixel_limits` (either form).
        The vision config wins for the patch geometry (it is what the weights expect);
        keyword ``overrides`` win over both.
        """
        values = _overrides(
            processor_config,
            {
                "patch_size": "patch_size",
                "temporal_patch_size": "temporal_patch_size",
                "merge_size": "merge_size",
                "image_mean": "image_mean",
                "image_std": "image_std",
                "rescale_factor": "rescale_factor",
            },
        )
        values.update(qwen_pixel_limits(processor_config))
        values.update(
            _overrides(
                vision_config,
                {
                    "patch_size": "patch_size",
                    "temporal_patch_size": "temporal_patch_size",
                    "spatial_merge_size": "merge_size",
                },
            )
        )
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_image_processor(cls, processor: Any, **overrides: Any) -> QwenVisionSpec:
        """Build from a ``Qwen2VLImageProcessor``/``Qwen2VLImageProcessorPil`` instance."""
        return cls.from_config(processor_config=processor, **overrides)


def prepare_qwen(frames: Sequence[np.ndarray], spec: QwenVisionSpec | None = None) -> PreparedPixels:
    """Resize and patchify one chunk of frames for Qwen2-VL / Qwen2.5-VL, still as uint8.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames; their count must be a multiple of
            ``spec.temporal_patch_size``. All are resized to the ``smart_resize`` size
            of the first frame, so a chunk is always one grid.
        spec: geometry and normalisation (default ``QwenVisionSpec()``).

    Returns:
        ``PreparedPixels`` with uint8 ``levels`` ``[grid_t * grid_h * grid_w, 3 * T * P * P]``
        and ``grid`` = ``(grid_t, grid_h, grid_w)`` in patches; ``.normalised(device)`` gives
        the ``pixel_values`` for ``model.visual(pixel_values, grid_thw=...)``.
    """
    spec = spec or QwenVisionSpec()
    tps, ps, ms = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    if not frames or len(frames) % tps:
        raise InvalidFrameError(
            f"a Qwen2-VL chunk needs a positive multiple of {tps} frames, got {len(frames)}; "
            "repeat the last frame to pad it"
        )
    frames = [check_rgb(f, f"frame {i} of the chunk") for i, f in enumerate(frames)]
    height, width = smart_resize(*frames[0].shape[:2], spec.factor, spec.min_pixels, spec.max_pixels)
    x = torch.from_numpy(np.stack([resize_bicubic(f, height, width) for f in frames]))  # (F, H, W, 3)
    x = x.permute(0, 3, 1, 2)  # (F, C, H, W)
    grid_t, grid_h, grid_w = len(frames) // tps, height // ps, width // ps
    x = x.reshape(grid_t, tps, 3, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
    # -> (t, h-block, w-block, h-in-block, w-in-block, C, T, py, px): merge-friendly order,
    # so each run of ms*ms rows is one LLM token after the vision merger.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    levels = x.reshape(grid_t * grid_h * grid_w, 3 * tps * ps * ps).contiguous()
    return PreparedPixels(levels, _table(spec), (grid_t, grid_h, grid_w))


def patchify_qwen(
    frames: Sequence[np.ndarray], spec: QwenVisionSpec | None = None
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Preprocess one chunk of frames for Qwen2-VL / Qwen2.5-VL's vision tower on the CPU.

    ``prepare_qwen`` (see it for ``frames`` and ``spec``) normalised on the CPU: float32
    ``pixel_values`` ``[grid_t * grid_h * grid_w, 3 * T * P * P]`` and ``grid_thw`` =
    ``(grid_t, grid_h, grid_w)`` in patches, as passed to ``model.visual(pixel_values, grid_thw=...)``.
    """
    prepared = prepare_qwen(frames, spec)
    return prepared.normalised(), prepared.grid


class QwenPatchifier:
    """``patchify_qwen`` bound to a spec: ``QwenPatchifier(spec)(frames)``."""

    def __init__(self, spec: QwenVisionSpec | None = None):
        self.spec = spec or QwenVisionSpec()

    def __call__(self, frames: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        return patchify_qwen(frames, self.spec)

    def prepare(self, frames: Sequence[np.ndarray]) -> PreparedPixels:
        """``prepare_qwen(frames, spec)``: the chunk resized and patchified, still uint8."""
        return prepare_qwen(frames, self.spec)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size a ``height × width`` frame is resized to."""
        return smart_resize(height, width, self.spec.factor, self.spec.min_pixels, self.spec.max_pixels)


# --------------------------------------------------------------------- LLaVA-OneVision


@dataclass(frozen=True)
class LlavaOnevisionSpec:
    """How LLaVA-OneVision video frames are resized and normalised.

    Defaults are the released checkpoints' (SigLIP-so400m tower): 384×384, mean/std 0.5.
    """

    image_size: int = 384
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        _check_spec(self)

    @classmethod
    def from_config(
        cls, vision_config: Any = None, processor_config: Mapping | Any = None, **overrides: Any
    ) -> LlavaOnevisionSpec:
        """Build from a model's ``vision_config`` and/or a processor config dict/object.

        The square side comes from ``size.height`` (or ``size.shortest_edge``) of the
        processor, else ``vision_config.image_size``; ``overrides`` win.
        """
        values = _overrides(
            processor_config,
            {"image_mean": "image_mean", "image_std": "image_std", "rescale_factor": "rescale_factor"},
        )
        values.update(_overrides(vision_config, {"image_size": "image_size"}))
        side = llava_frame_side(processor_config)
        if side is not None:
            values["image_size"] = side
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def llava_frame_side(processor_config: Mapping | Any) -> int | None:
    """The square side a LLaVA-OneVision processor config resizes frames to, or None if it sets none.

    Read from ``size.height`` (the released image and video processors:
    ``{"height": 384, "width": 384}``) or ``size.shortest_edge`` (older configs).
    ``image_grid_pinpoints`` and ``crop_size`` are not read: anyres tiling applies to
    still images only, and the processors leave ``do_center_crop`` off.
    """
    side = _overrides(_get(processor_config, "size"), {"shortest_edge": "side", "height": "side"})
    return side.get("side")


def prepare_llava_onevision(
    frames: Sequence[np.ndarray], spec: LlavaOnevisionSpec | None = None
) -> PreparedPixels:
    """LLaVA-OneVision's ``[F, 3, S, S]`` pixels from ``(H, W, 3)`` uint8 frames, still uint8.

    Each frame is resized straight to ``S × S`` (no padding or cropping: the aspect
    ratio is not kept, as in the video processor), bicubic; ``.normalised(device)``
    rescales and normalises them.
    """
    spec = spec or LlavaOnevisionSpec()
    if not frames:
        raise InvalidFrameError("got an empty list of frames; pass at least one (H, W, 3) uint8 frame")
    size = spec.image_size
    stack = np.stack([resize_bicubic(check_rgb(f, f"frame {i}"), size, size) for i, f in enumerate(frames)])
    levels = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
    return PreparedPixels(levels, _table(spec))


def preprocess_llava_onevision(
    frames: Sequence[np.ndarray], spec: LlavaOnevisionSpec | None = None
) -> torch.Tensor:
    """``[F, 3, S, S]`` float32 pixel values for LLaVA-OneVision: ``prepare_llava_onevision``
    normalised on the CPU."""
    return prepare_llava_onevision(frames, spec).normalised()


class LlavaOnevisionPreprocessor:
    """``preprocess_llava_onevision`` bound to a spec: ``LlavaOnevisionPreprocessor(spec)(frames)``."""

    def __init__(self, spec: LlavaOnevisionSpec | None = None):
        self.spec = spec or LlavaOnevisionSpec()

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        return preprocess_llava_onevision(frames, self.spec)

    def prepare(self, frames: Sequence[np.ndarray]) -> PreparedPixels:
        """``prepare_llava_onevision(frames, spec)``: the frames resized, still uint8."""
        return prepare_llava_onevision(frames, self.spec)


__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "QWEN_IMAGE_MAX_PIXELS",
    "QWEN_IMAGE_MIN_PIXELS",
    "QWEN_VIDEO_MAX_PIXELS",
    "QWEN_VIDEO_MIN_PIXELS",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "LlavaOnevisionPreprocessor",
    "LlavaOnevisionSpec",
    "PreparedPixels",
    "QwenPatchifier",
    "QwenVisionSpec",
    "level_table",
    "llava_frame_side",
    "patchify_qwen",
    "prepare_llava_onevision",
    "prepare_qwen",
    "preprocess_llava_onevision",
    "qwen_pixel_limits",
    "smart_resize",
]
