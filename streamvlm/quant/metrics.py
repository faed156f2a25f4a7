"""Error measures for quantized KV: tensor error and what attention does with it."""

from __future__ import annotations

from typing import NamedTuple

import torch


class AttentionError(NamedTuple):
    output_rel_error: float  # ||o_hat - o|| / ||o|| over all heads and queries
    weights_tv: float  # total-variation distance of attention weights, mean over heads and queries


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``||x_hat - x|| / ||x||`` (Frobenius, float64)."""
    x, x_hat = x.double(), x_hat.double().to(x.device)
    return float((x_hat - x).norm() / x.norm().clamp_min(1e-300))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # grouped-query attention: each KV head serves heads_q / heads_kv query heads
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return w, w @ v


def attention_error(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_hat: torch.Tensor, v_hat: torch.Tensor
) -> AttentionError:
    """How far attention over ``(k_hat, v_hat)`` is from attention over ``(k, v)``.

    ``q`` is ``[heads_q, queries, head_dim]``, keys and values ``[heads_kv, tokens, head_dim]``
    with ``heads_q`` a multiple of ``heads_kv``. No mask: every query sees every key (queries
    come after the cached block). Computed in float64.
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] % k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention_error: q {tuple(q.shape)} and k {tuple(k.shape)} must be [heads, tokens, head_dim] "
            "with heads_q a multiple of heads_kv"
        )
    q, k, v = q.double(), k.double(), v.double()
    w, o = _attend(q, k, v)
    w_hat, o_hat = _attend(q, k_hat.double().to(q.device), v_hat.double().to(q.device))
    rel = float((o_hat - o).norm() / o.norm().clamp_min(1e-300))
    tv = float(0.5 * (w_hat - w).abs().sum(dim=-1).mean())
    return AttentionError(rel, tv)
