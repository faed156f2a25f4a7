"""An SDPA attention function for caches whose layers hold different numbers of slots.

With per-layer retrieval each layer attends to its own blocks, so the layers of one cache
have different lengths, and transformers' single mask (built from layer 0's length)
cannot serve them all. This function is registered with ``AttentionInterface`` and,
having no mask function of its own, receives no mask: it builds each layer's from that
layer's lengths (every cached slot visible, new tokens causal among themselves). An
explicit 4-D mask is passed through unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "streamvlm_sdpa"


def streamvlm_sdpa(module, query, key, value, attention_mask, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and q_len > 1:
        # bottom-right aligned: query i sees cached slots and new tokens up to itself
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        attention_mask = visible[None, None]
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=False, **kwargs)


AttentionInterface.register(NAME, streamvlm_sdpa)


@contextmanager
def attention_implementation(config, name: str = NAME):
    """Use attention ``name`` for the modules holding ``config`` while the block runs.

    Set per call rather than for good so that plain ``model(...)`` calls (references,
    other users of the model) keep the model's own implementation. Callers hold the
    engine's device lock, so no other forward runs meanwhile.
    """
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
