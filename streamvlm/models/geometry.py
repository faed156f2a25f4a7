"""Real-geometry checkpoints made offline: released configs, two text layers, random weights.

Each ``geom-*`` model has every per-layer size of a released checkpoint (hidden size,
heads, KV heads, head_dim, MLP size, mRoPE sections, rope theta, norm eps, vision patch,
merge and window sizes, SigLIP 384/14, vocabulary size and the released special-token
ids) but only two text layers and two vision blocks, with seeded random weights. It is
written as a real Hugging Face checkpoint (config.json, model.safetensors in bfloat16,
tokenizer, generation config, preprocessor and video preprocessor configs) into a cache
directory on first use and then loaded like any downloaded checkpoint, so the KV sizes,
token rates and code paths are those of the released model. Nothing is downloaded.

Where the values come from (the released files on the Hugging Face hub):

- ``Qwen/Qwen2.5-VL-7B-Instruct`` and ``Qwen/Qwen2.5-VL-3B-Instruct``: ``config.json``
  (text and vision sizes, mRoPE sections, rope theta, eps, token ids, tied embeddings),
  ``added_tokens.json`` / ``tokenizer_config.json`` (the 22 special tokens 151643-151664),
  ``preprocessor_config.json`` (pixel budget and CLIP normalisation).
- ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf`` and ``llava-hf/llava-onevision-qwen2-7b-ov-hf``:
  ``config.json`` (Qwen2 text config, SigLIP so400m vision config, feature layer and
  strategy, projector, grid pinpoints), ``added_tokens.json`` (``<image>`` 151646,
  ``<video>`` 151647), ``preprocessor_config.json`` and ``video_processor/preprocessor_config.json``.
- The Qwen video budget (128-768 merged tokens per temporal patch) is
  ``Qwen2VLVideoProcessor``'s default in transformers, which the released checkpoints
  use for video (they ship no video budget of their own).

Scaled down: 2 text layers (``num_hidden_layers``, ``max_window_layers``), 2 vision
blocks. Qwen2.5-VL's released towers make every 8th block full attention (indexes 7, 15,
23, 31) and the rest window attention; two blocks keep that pattern as window then full
(``fullatt_block_indexes=[1]``). SigLIP keeps 2 of its 26 layers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from ..ingest.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    QWEN_IMAGE_MAX_PIXELS,
    QWEN_IMAGE_MIN_PIXELS,
    QWEN_VIDEO_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    SIGLIP_MEAN,
    SIGLIP_STD,
)
from ..output import is_verbose
from .catalog import GEOM_LLAVA_05B, GEOM_LLAVA_7B, GEOM_QWEN_3B, GEOM_QWEN_7B, GEOMETRY_MODELS
from .hf_compat import progress_bars, set_attention_implementation
from .tokenizer import build_tiny_tokenizer, qwen_vl_token_fields

# Bumped whenever what make_geometry_checkpoint writes changes, so cached copies are rebuilt.
FORMAT_VERSION = 2
_MARKER = "streamvlm-geometry.json"  # written last: a directory without it is incomplete

TEXT_LAYERS = 2
VISION_LAYERS = 2

# --------------------------------------------------------------- released token ids

# Qwen2.5-VL's added tokens (tokenizer_config.json added_tokens_decoder, the same in the
# 3B and 7B releases): ids 151643-151664 in this order.
QWEN_SPECIAL_IDS = {
    token: 151643 + i
    for i, token in enumerate(
        (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        )
    )
}
# llava-hf's LLaVA-OneVision (added_tokens.json of both releases).
LLAVA_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "<video>": 151647,
}

# ------------------------------------------------------------- released model sizes

# Qwen2.5-VL text sizes per release (config.json). head_dim = hidden / heads = 128 for both.
_QWEN_TEXT = {
    GEOM_QWEN_7B: dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    GEOM_QWEN_3B: dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}
# Qwen2 text sizes of the LLaVA-OneVision releases (config.json text_config); the
# vocabulary is Qwen2's padded by llava-hf to hold <image> and <video>.
# head_dim = 896 / 14 = 64 (0.5B) and 3584 / 28 = 128 (7B).
_LLAVA_TEXT = {
    GEOM_LLAVA_05B: dict(
        hidden_size=896,
        intermediate_size=4864,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=152000,
        tie_word_embeddings=True,
    ),
    GEOM_LLAVA_7B: dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152128,
        tie_word_embeddings=False,
    ),
}

RELEASED = {
    GEOM_QWEN_7B: "Qwen/Qwen2.5-VL-7B-Instruct",
    GEOM_QWEN_3B: "Qwen/Qwen2.5-VL-3B-Instruct",
    GEOM_LLAVA_05B: "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    GEOM_LLAVA_7B: "llava-hf/llava-onevision-qwen2-7b-ov-hf",
}
# the released models' text layers (num_hidden_layers of their config.json): a geom
# checkpoint keeps 2, and figures "at full depth" scale per-layer costs by these
RELEASED_TEXT_LAYERS = {GEOM_QWEN_7B: 28, GEOM_QWEN_3B: 36, GEOM_LLAVA_05B: 24, GEOM_LLAVA_7B: 28}
# and their vision blocks (the vision config's depth / num_hidden_layers): a geom checkpoint
# keeps VISION_LAYERS of them
RELEASED_VISION_BLOCKS = {GEOM_QWEN_7B: 32, GEOM_QWEN_3B: 32, GEOM_LLAVA_05B: 26, GEOM_LLAVA_7B: 26}


def qwen_geometry_config(name: str) -> Qwen2_5_VLConfig:
    """The released Qwen2.5-VL config of ``name`` with 2 text layers and 2 vision blocks."""
    sizes = _QWEN_TEXT[name]
    ids = QWEN_SPECIAL_IDS
    text = dict(
        sizes,
        num_hidden_layers=TEXT_LAYERS,
        max_window_layers=TEXT_LAYERS,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        use_sliding_window=False,
        sliding_window=32768,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision = dict(
        depth=VISION_LAYERS,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        hidden_act="silu",
        in_channels=3,
        out_hidden_size=sizes["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[VISION_LAYERS - 1],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **qwen_vl_token_fields(ids, bos=True),
        tie_word_embeddings=sizes["tie_word_embeddings"],
    )


# LlavaOnevisionImageProcessor's any-resolution grid (config.json and preprocessor_config.json):
# every (height, width) in multiples of 384 up to 6 x 384 = 2304.
_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]


def llava_geometry_config(name: str) -> LlavaOnevisionConfig:
    """The released LLaVA-OneVision config of ``name`` with 2 text layers and 2 SigLIP layers."""
    sizes = _LLAVA_TEXT[name]
    ids = LLAVA_SPECIAL_IDS
    text = dict(
        sizes,
        model_type="qwen2",
        num_hidden_layers=TEXT_LAYERS,
        max_window_layers=TEXT_LAYERS,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    # google/siglip-so400m-patch14-384 without its pooling head
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<image>"],
        video_token_id=ids["<video>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=_PINPOINTS,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=sizes["tie_word_embeddings"],
    )


# --------------------------------------------------------- released processor files

_QWEN_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "min_pixels": QWEN_IMAGE_MIN_PIXELS,  # 3136
    "max_pixels": QWEN_IMAGE_MAX_PIXELS,  # 12845056
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
}
# Qwen2VLVideoProcessor's defaults as transformers 5 saves them: the budget as ``size``
# (it folds legacy ``min_pixels`` / ``max_pixels`` into it), 128-768 merged tokens a patch.
_QWEN_VIDEO_PREPROCESSOR = {
    "video_processor_type": "Qwen2VLVideoProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "size": {"shortest_edge": QWEN_VIDEO_MIN_PIXELS, "longest_edge": QWEN_VIDEO_MAX_PIXELS},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
}
_SIGLIP_PROCESSING = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(SIGLIP_MEAN),
    "image_std": list(SIGLIP_STD),
    "resample": 3,  # bicubic
    "rescale_factor": 1 / 255,
    "size": {"height": 384, "width": 384},
    "processor_class": "LlavaOnevisionProcessor",
}
_LLAVA_PREPROCESSOR = dict(
    _SIGLIP_PROCESSING,
    image_processor_type="LlavaOnevisionImageProcessor",
    do_pad=True,
    image_grid_pinpoints=_PINPOINTS,
)
_LLAVA_VIDEO_PREPROCESSOR = dict(_SIGLIP_PROCESSING, video_processor_type="LlavaOnevisionVideoProcessor")

# generation_config.json's token ids; the releases' sampling settings are left out.
_QWEN_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643]}
_LLAVA_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": 151645}


@dataclass(frozen=True)
class GeometrySpec:
    """Everything one ``geom-*`` checkpoint is made from."""

    released: str  # the hub id whose values it carries
    config: Callable[[str], PretrainedConfig]  # name -> the scaled-down model config
    model_class: type[PreTrainedModel]
    special_ids: dict[str, int]  # the released tokenizer's special tokens and their ids
    preprocessor: dict  # preprocessor_config.json
    video_preprocessor: dict  # video_preprocessor_config.json
    generation: dict  # the token ids of generation_config.json (streamvlm decodes greedily itself)
    released_layers: int  # text layers of the released model (the checkpoint has fewer)


def geometry_spec(name: str) -> GeometrySpec:
    """The spec of the real-geometry model ``name`` (one of ``GEOMETRY_MODELS``)."""
    if name not in RELEASED:
        raise ValueError(f"{name!r} is not a real-geometry model; use one of {', '.join(GEOMETRY_MODELS)}")
    if name in _QWEN_TEXT:
        return GeometrySpec(
            RELEASED[name],
            qwen_geometry_config,
            Qwen2_5_VLForConditionalGeneration,
            QWEN_SPECIAL_IDS,
            _QWEN_PREPROCESSOR,
            _QWEN_VIDEO_PREPROCESSOR,
            _QWEN_GENERATION,
            RELEASED_TEXT_LAYERS[name],
        )
    return GeometrySpec(
        RELEASED[name],
        llava_geometry_config,
        LlavaOnevisionForConditionalGeneration,
        LLAVA_SPECIAL_IDS,
        _LLAVA_PREPROCESSOR,
        _LLAVA_VIDEO_PREPROCESSOR,
        _LLAVA_GENERATION,
        RELEASED_TEXT_LAYERS[name],
    )


# ------------------------------------------------------------------------- building


def build_geometry_model(name: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel:
    """The model ``name`` with weights drawn from ``seed`` in ``dtype`` (global RNG untouched).

    The weights are created in ``dtype`` directly: at real vocabulary and hidden size a
    float32 copy would double the peak memory for nothing (the release is bfloat16).
    """
    spec = geometry_spec(name)
    config = spec.config(name)
    config.dtype = dtype
    set_attention_implementation(config, "sdpa")
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = spec.model_class(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()


def make_geometry_checkpoint(name: str, directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write the real-geometry checkpoint ``name`` into ``directory`` and return it.

    The files are those of a release: config.json, model.safetensors (bfloat16),
    generation_config.json, the tokenizer files, preprocessor_config.json and
    video_preprocessor_config.json. The directory is written beside its destination
    and renamed into place, so a reader never sees half a checkpoint.
    """
    spec = geometry_spec(name)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache's checkpoints from other users
    try:
        model = build_geometry_model(name, seed=seed)
        model.generation_config.update(**spec.generation)
        with progress_bars(shown=is_verbose()):  # transformers' "Writing model shards" bar
            model.save_pretrained(staging)  # config.json, generation_config.json, model.safetensors
        del model
        build_tiny_tokenizer(spec.special_ids).save_pretrained(staging)
        _write_json(staging / "preprocessor_config.json", spec.preprocessor)
        _write_json(staging / "video_preprocessor_config.json", spec.video_preprocessor)
        _write_json(staging / _MARKER, _marker(name, seed))
        if _is_current(directory, name, seed):  # another process made it meanwhile: keep theirs
            shutil.rmtree(staging)
            return directory
        if directory.exists():  # stale or incomplete
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def geometry_cache_dir() -> Path:
    """Where ``geom-*`` checkpoints are kept: ``$STREAMVLM_CACHE/geom``, else ``~/.cache/streamvlm/geom``."""
    root = os.environ.get("STREAMVLM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "streamvlm") / "geom"


def geometry_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The checkpoint directory of ``name``, made on first use; ``None`` if ``name`` is not a geom model.

    The directory is ``<cache_dir>/<name>``, ``cache_dir`` defaulting to
    ``geometry_cache_dir()``. One made by another format version (or left incomplete) is
    made again. Weights are always drawn from seed 0, so every machine makes the same files.
    """
    if name not in RELEASED:
        return None
    directory = Path(cache_dir) if cache_dir is not None else geometry_cache_dir()
    directory = directory / name
    if not _is_current(directory, name):
        make_geometry_checkpoint(name, directory)
    return directory


def _marker(name: str, seed: int) -> dict:
    return {"name": name, "released": RELEASED[name], "seed": seed, "format": FORMAT_VERSION}


def _is_current(directory: Path, name: str, seed: int = 0) -> bool:
    """Whether ``directory`` holds a complete checkpoint of ``name`` as this version makes it."""
    try:
        return json.loads((directory / _MARKER).read_text()) == _marker(name, seed)
    except (OSError, ValueError):
        return False


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


__all__ = [
    "GEOMETRY_MODELS",
    "GEOM_LLAVA_05B",
    "GEOM_LLAVA_7B",
    "GEOM_QWEN_3B",
    "GEOM_QWEN_7B",
    "GeometrySpec",
    "build_geometry_model",
    "geometry_cache_dir",
    "geometry_path",
    "geometry_spec",
    "make_geometry_checkpoint",
]
