"""Key summaries: one vector per block and layer that retrieval compares questions with.

ReKV's summary: the mean of a block's keys per KV head, concatenated. Keys are cached
after RoPE (invariant 2 of docs/architecture.md), and a rotated key depends on where it sits, so
summaries are taken over de-rotated keys: two blocks showing the same thing at different
times then get the same summary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.base import Backend, LayerKV, rotate


def block_summary(backend: Backend, layers: Sequence[LayerKV], positions: torch.Tensor) -> torch.Tensor:
    """[layers, kv_heads * head_dim] float32 on the CPU: mean pre-RoPE key per KV head, per layer."""
    cos, sin = backend.rotary(positions)  # one rotary evaluation serves every layer
    rows = [rotate(keys, cos, sin, inverse=True).mean(dim=1).flatten() for keys, _ in layers]
    return torch.stack(rows).cpu()
