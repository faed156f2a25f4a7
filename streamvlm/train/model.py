"""The architecture of the tiny model the project trains: real Qwen2.5-VL classes, ~2M parameters."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig

from ..models.tiny import QWEN_TINY_PROCESSOR_CONFIG, QWEN_TINY_VIDEO_CONFIG
from ..models.tokenizer import SPECIAL_TOKENS, qwen_vl_token_fields

# What a checkpoint ships next to its weights, so StreamVLM.from_pretrained(path)
# preprocesses frames exactly as training did (112 px frames stay 112 px: 16 merged
# tokens per 2-frame block): the same configs as the random tiny Qwen model's.
PROCESSOR_CONFIG = QWEN_TINY_PROCESSOR_CONFIG
VIDEO_PROCESSOR_CONFIG = QWEN_TINY_VIDEO_CONFIG


def trained_tiny_config(
    tokenizer: PreTrainedTokenizerBase, hidden: int = 128, layers: int = 4
) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL layout: ``layers`` LLM layers of width ``hidden`` (head_dim 32, GQA 4:2), a 4-block ViT."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = 32
    half = head_dim // 2
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=max(1, hidden // head_dim // 2),
        max_position_embeddings=65536,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8],
        },
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=4,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1, 3],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **qwen_vl_token_fields(ids),
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return config
