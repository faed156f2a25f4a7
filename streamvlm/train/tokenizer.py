"""A word-level tokenizer for a closed vocabulary, in Hugging Face format.

The synthetic world's questions and answers use a few dozen words; one token per word
keeps the tiny model's embedding table and its answers (single words) small. The chat
and vision special tokens are the same strings as Qwen2.5-VL's, so streamvlm's backend
builds its prompts with this tokenizer unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

UNK = "<unk>"


def words_of(texts: Iterable[str]) -> set[str]:
    """The words and punctuation marks the tokenizer will split ``texts`` into (lower-cased)."""
    out: set[str] = set()
    for text in texts:
        out.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return out


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is the special tokens, ``<unk>`` and ``words``.

    Ids: specials first (in ``SPECIAL_TOKENS`` order), then ``<unk>``, then the words sorted.
    Text is lower-cased and split on whitespace and punctuation; decoding joins with spaces.
    """
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, UNK, *sorted(set(words) - {UNK})])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(
        prefix="##", cleanup=True
    )  # joins words with spaces, tidies punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
