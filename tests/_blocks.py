"""Random blocks for memory-tier tests (not a test module: imported by them)."""

from __future__ import annotations

import torch

from streamvlm.memory.block import Block, BlockMeta


def random_block(
    block_id: int, tokens: int, layers: int, heads: int, dim: int, position_step: int = 10
) -> Block:
    """A block of seeded random KV ``[heads, tokens, dim]`` per layer, with positions
    ``position_step * block_id + 0..tokens-1`` on every axis and a random summary."""
    g = torch.Generator().manual_seed(block_id)
    kv = tuple(
        (torch.randn(heads, tokens, dim, generator=g), torch.randn(heads, tokens, dim, generator=g))
        for _ in range(layers)
    )
    meta = BlockMeta(
        id=block_id,
        t_start=float(block_id),
        t_end=block_id + 0.5,
        frames=2,
        positions=torch.arange(tokens).expand(3, tokens) + position_step * block_id,
        kept=torch.ones(tokens, dtype=torch.bool),
        summary=torch.randn(layers, heads * dim, generator=g),
    )
    return Block(meta=meta, layers=kv)
