"""Tiny, randomly initialised, seed-deterministic models built offline from config classes.

They use the real transformers model classes, so everything streamvlm does with them
(vision tower, mRoPE, KV caches) is what it does with the released checkpoints, only
small enough for a CPU test suite.
"""

from __future__ import annotations

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from ..ingest.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from .catalog import TINY_LLAVA, TINY_MODELS, TINY_QWEN
from .hf_compat import set_attention_implementation
from .tokenizer import SPECIAL_TOKENS, build_tiny_tokenizer, qwen_vl_token_fields

# The embedding table is a little larger than the tokenizer (256 bytes + 10 specials),
# as real checkpoints' are; the spare rows are never produced by the tokenizer.
_VOCAB_SIZE = 272
_TOKEN_ID = {token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)}

_TEXT = dict(
    vocab_size=_VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    bos_token_id=None,
    eos_token_id=_TOKEN_ID["<|im_end|>"],
    pad_token_id=_TOKEN_ID["<|endoftext|>"],
)


def tiny_qwen_config() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL layout at toy size: 2 LLM layers, GQA 4:2, head_dim 16, mRoPE 2/3/3."""
    text = dict(
        _TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=_TEXT["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **qwen_vl_token_fields(_TOKEN_ID),
        pad_token_id=_TOKEN_ID["<|endoftext|>"],
    )


def tiny_llava_config() -> LlavaOnevisionConfig:
    """LLaVA-OneVision layout at toy size: SigLIP 112 px / 14 px patches, Qwen2 LLM."""
    return LlavaOnevisionConfig(
        text_config=dict(_TEXT, model_type="qwen2"),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=112,
            patch_size=14,
        ),
        image_token_id=_TOKEN_ID["<image>"],
        video_token_id=_TOKEN_ID["<video>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )


# The tiny Qwen checkpoints' processor configs (random and trained alike): Qwen2.5-VL's
# image processor values, with a small per-frame video budget (at most 64 merged tokens
# per temporal patch) so CPU tests and demos stay quick.
QWEN_TINY_PROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
    "min_pixels": 56 * 56,
    "max_pixels": 28 * 28 * 1280,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}
QWEN_TINY_VIDEO_CONFIG = {"min_pixels": 56 * 56, "max_pixels": 64 * 28 * 28}


def tiny_processor_configs(name: str) -> tuple[dict, dict]:
    """(preprocessor_config, video_preprocessor_config) of a tiny model, as a checkpoint would ship them.

    LLaVA frames are the tower's 112 px squares.
    """
    if name == TINY_QWEN:
        return dict(QWEN_TINY_PROCESSOR_CONFIG), dict(QWEN_TINY_VIDEO_CONFIG)
    processor = {
        "image_mean": list(SIGLIP_MEAN),
        "image_std": list(SIGLIP_STD),
        "size": {"height": 112, "width": 112},
        "image_processor_type": "LlavaOnevisionImageProcessor",
    }
    return processor, {}


def save_tiny_checkpoint(name: str, directory, seed: int = 0) -> None:
    """Write a tiny model as a release would look: config, safetensors, tokenizer, processor configs."""
    import json
    from pathlib import Path

    directory = Path(directory)
    build_tiny_model(name, seed=seed).save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    processor, video = tiny_processor_configs(name)
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    if video:
        (directory / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


def build_tiny_model(name: str, seed: int = 0) -> PreTrainedModel:
    """Build the named tiny model with weights drawn from ``seed`` (global RNG untouched)."""
    builders = {
        TINY_QWEN: (tiny_qwen_config, Qwen2_5_VLForConditionalGeneration),
        TINY_LLAVA: (tiny_llava_config, LlavaOnevisionForConditionalGeneration),
    }
    make_config, model_class = builders[name]
    config = make_config()
    set_attention_implementation(config, "sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


__all__ = [
    "TINY_LLAVA",
    "TINY_MODELS",
    "TINY_QWEN",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "save_tiny_checkpoint",
    "tiny_processor_configs",
]
