"""Synthetic KV with the structure that matters to quantizers (for tests and measurements).

Real LLM keys have a few channels with much larger magnitude than the rest ("outlier
channels"), consistent across tokens; values are closer to isotropic. Queries share the
keys' outlier channels (the same RoPE'd projections make them), which is what makes key
outliers matter for attention.
"""

from __future__ import annotations

import torch


def outlier_channels(heads: int, head_dim: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[heads, count]`` distinct channel indices per head."""
    return torch.stack([torch.randperm(head_dim, generator=generator)[:count] for _ in range(heads)])


def synthetic_kv(
    heads: int,
    tokens: int,
    head_dim: int,
    *,
    queries: int = 16,
    query_heads: int | None = None,
    outliers: int = 4,
    outlier_scale: float = 20.0,
    logit_std: float = 2.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q ``[query_heads, queries, head_dim]``, k, v ``[heads, tokens, head_dim]``), float32.

    Standard normal entries; in keys and queries ``outliers`` channels per KV head are
    scaled by ``outlier_scale``. Queries are then scaled so that the attention logits
    ``q k^T / sqrt(head_dim)`` have standard deviation ``logit_std``: attention is peaked
    (a few dozen tokens carry most weight at 2.0) but not one-hot.
    """
    g = torch.Generator().manual_seed(seed)
    query_heads = heads if query_heads is None else query_heads
    k = torch.randn(heads, tokens, head_dim, generator=g)
    v = torch.randn(heads, tokens, head_dim, generator=g)
    q = torch.randn(query_heads, queries, head_dim, generator=g)
    idx = outlier_channels(heads, head_dim, outliers, g)
    gain = torch.ones(heads, head_dim).scatter_(1, idx, outlier_scale)
    k = k * gain[:, None, :]
    q = q * gain.repeat_interleave(query_heads // heads, dim=0)[:, None, :]
    rep = query_heads // heads
    logits = q @ k.repeat_interleave(rep, dim=0).transpose(1, 2) / head_dim**0.5
    q = q * (logit_std / logits.std().clamp_min(1e-12))
    return q, k, v
