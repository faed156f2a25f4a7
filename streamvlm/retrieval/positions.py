"""ReKV's ``contiguous`` position mode: retrieved blocks re-rotated to consecutive positions.

In the default ``original`` mode a retrieved block keeps the positions it was encoded at
(DESIGN.md invariant 2), so a question about minute 3 of a two-hour stream sees its keys
at a large relative distance. ``contiguous`` closes the gaps: the attended blocks, in time
order, are laid out one after another from the start of the video, and the question
follows the last of them. Keys are de-rotated with their old positions and rotated with
the new ones; values do not carry positions.

- 1-D positions (LLaVA-OneVision): each block takes the next ``tokens`` positions.
- 3-D mRoPE (Qwen2.5-VL): height and width rows are unchanged; the k-th temporal patch of
  the attended blocks gets time ``video_start + k * step``, with ``step`` the spacing a
  video sampled at 1 fps gets (``tokens_per_second * temporal_patch_size``), keeping the
  order and spacing of patches within a block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..memory.block import Block
from ..models.base import rotate


def contiguous_positions(
    blocks: Sequence[Block], video_start: int, position_dims: int, step: int = 1
) -> dict:
    """New positions [position_dims, tokens] for each block id, laid out in time order."""
    out = {}
    cursor = video_start
    for block in sorted(blocks, key=lambda b: b.id):
        old = block.meta.positions
        new = old.clone()
        if position_dims == 1:
            new[0] = torch.arange(cursor, cursor + old.shape[1])
            cursor += old.shape[1]
        else:
            times = torch.unique(old[0])  # this block's temporal patches, in order
            mapping = {int(t): cursor + k * step for k, t in enumerate(times)}
            new[0] = torch.tensor([mapping[int(t)] for t in old[0]])
            cursor += len(times) * step
        out[block.id] = new
    return out


def reposition(backend, block: Block, positions: torch.Tensor) -> Block:
    """The block with its keys re-rotated from their encoded positions to ``positions``."""
    cos_old, sin_old = backend.rotary(block.meta.positions)
    cos_new, sin_new = backend.rotary(positions)
    layers = tuple(
        (rotate(rotate(k, cos_old, sin_old, inverse=True), cos_new, sin_new).to(k.dtype), v)
        for k, v in block.layers
    )
    return Block(meta=replace(block.meta, positions=positions), layers=layers)
