"""A byte-level BPE tokenizer built in memory, for the offline tiny and real-geometry models.

It uses the real ``Qwen2Tokenizer`` class (the tokenizer both Qwen2.5-VL and
LLaVA-OneVision ship) over the 256 byte symbols, so any text round-trips, plus the chat
and vision special tokens both model families use. No file or network is needed.
The tiny models number their special tokens right after the bytes; the real-geometry
models (``models/geometry.py``) place them at the ids the released tokenizers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from transformers import Qwen2Tokenizer

# The chat template markers and the vision placeholders of Qwen2.5-VL; LLaVA-OneVision
# (a Qwen2 language model) uses the same chat markers plus <image> / <video>.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<video>",
)

# Qwen2's chat template, reduced to what the runtime needs: text-only turns with an
# optional default system prompt. streamvlm assembles the video part itself.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_symbols() -> list[str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode symbols."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    symbols = _byte_symbols() + list(SPECIAL_TOKENS)
    return {symbol: i for i, symbol in enumerate(symbols)}


def _vocab_at(special_ids: Mapping[str, int]) -> dict[str, int]:
    """Bytes at 0-255, each special token at its given id, unused placeholders in between.

    The placeholders stand for the released BPE merges' tokens: no merge produces them,
    so they only keep the ids where the release has them.
    """
    by_id = {i: token for token, i in special_ids.items()}
    symbols = _byte_symbols()
    if min(by_id) < len(symbols) or len(by_id) != len(special_ids):
        raise ValueError(
            f"special token ids must be distinct and at least {len(symbols)}; got {dict(special_ids)}"
        )
    symbols += [by_id.get(i, f"<|unused_{i}|>") for i in range(len(symbols), max(by_id) + 1)]
    return {symbol: i for i, symbol in enumerate(symbols)}


def build_tiny_tokenizer(special_ids: Mapping[str, int] | None = None) -> Qwen2Tokenizer:
    """Return a fresh byte-level ``Qwen2Tokenizer`` with the chat and vision special tokens.

    Ids 0-255 are bytes. Without ``special_ids`` the special tokens follow in
    ``SPECIAL_TOKENS`` order (256...); with it, exactly those tokens are special, each at
    its id (a released tokenizer's ids, e.g. ``{"<|im_start|>": 151644, ...}``).
    """
    vocab = dict(_vocab()) if special_ids is None else _vocab_at(special_ids)
    specials = list(SPECIAL_TOKENS) if special_ids is None else list(special_ids)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    # The tokens already have ids in the vocabulary; this marks them as special so they
    # are never split and are skipped by decode(skip_special_tokens=True).
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen_vl_token_fields(ids: Mapping[str, int], bos: bool = False) -> dict[str, int | None]:
    """The special-token ids a ``Qwen2_5_VLConfig`` names, from a token -> id map: the
    image and video placeholders, the vision delimiters, and the end of a turn as eos
    (``<|endoftext|>`` as bos where the release names one)."""
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"] if bos else None,
        eos_token_id=ids["<|im_end|>"],
    )
