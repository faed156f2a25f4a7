"""Softmax attention over subsets of the tokens, in a form that combines exactly.

Its own module because both the dispatch (``attention.py``) and the Triton kernels
(``attention_vidkv_triton.py``, which ``attention.py`` imports lazily) build and read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PartialAttention:
    """Softmax attention over a subset of the tokens, kept so that subsets combine exactly.

    ``splits`` subsets per KV head; ``rows`` = query heads per KV head x queries. The
    attention over the union is ``sum_s weighted_s e^(max_s - M) / sum_s sumexp_s e^(max_s - M)``
    with ``M`` the largest ``max_s`` (flash-decoding's reduction).
    """

    max: torch.Tensor  # float32 [kv_heads, splits, rows]: largest score of the subset
    sumexp: torch.Tensor  # float32 [kv_heads, splits, rows]: sum over the subset of exp(score - max)
    weighted: torch.Tensor  # float32 [kv_heads, splits, rows, head_dim]: sum of exp(score - max) * value


def combine_partials(partials: Sequence[PartialAttention]) -> torch.Tensor:
    """The attention over all the partials' tokens, float32 ``[kv_heads, rows, head_dim]``."""
    row_max = torch.cat([p.max for p in partials], dim=1)
    weight = torch.exp(row_max - row_max.amax(dim=1, keepdim=True))
    sumexp = (torch.cat([p.sumexp for p in partials], dim=1) * weight).sum(dim=1)
    weighted = (torch.cat([p.weighted for p in partials], dim=1) * weight.unsqueeze(-1)).sum(dim=1)
    return weighted / sumexp.unsqueeze(-1)


def dense_partial(rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> PartialAttention:
    """``PartialAttention`` of already scaled rows ``[kv_heads, rows, head_dim]`` over dense KV."""
    scores = rows @ keys.float().transpose(1, 2)
    row_max = scores.amax(dim=-1)
    p = torch.exp(scores - row_max.unsqueeze(-1))
    weighted = p @ values.float()
    return PartialAttention(row_max.unsqueeze(1), p.sum(dim=-1).unsqueeze(1), weighted.unsqueeze(1))
