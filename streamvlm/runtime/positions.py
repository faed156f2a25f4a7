"""Keeping every position inside the model's trained range (invariant 6 of docs/architecture.md).

While a stream fits, every forward uses the stream's own positions. Once a forward would
reach ``span`` (the model's ``max_position_embeddings`` unless ``MemoryConfig`` says
less), the runtime re-bases what that forward attends, as StreamingVLM and ReKV do: the
sinks stay at the start, the attended blocks are laid out right after them in time order
(``Backend.contiguous_positions``: each block keeps its internal layout), and the new
chunk or the question follows them. Keys are cached after RoPE, so a re-based block is
re-rotated (``Backend.reposition_keys``); stored blocks keep the positions they were
encoded at and are moved only for the forward that attends them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from ..memory.block import Block
from ..models.base import Backend


@dataclass
class PositionBound:
    """The span every position id (and so every query-key distance, the sinks starting at
    0) must stay below, and the largest span a forward has used so far."""

    span: int
    used: int = 0  # largest position id used by any forward, plus one

    def reaches(self, *positions: torch.Tensor, extra: int = 0) -> bool:
        """Whether ``positions`` (and ``extra`` positions after the last) reach the span."""
        return _span(positions, extra) > self.span

    def record(self, *positions: torch.Tensor, extra: int = 0, what: str = "this forward") -> None:
        """Note the span a forward uses; ``ConfigError`` if it is past the bound."""
        top = _span(positions, extra)
        if top > self.span:
            raise ConfigError(
                f"{what} needs {top} positions, past max_position_span={self.span} even after re-basing; "
                "attend less (a smaller window, top_k or answer_tokens)"
            )
        self.used = max(self.used, top)


def _span(positions: tuple[torch.Tensor, ...], extra: int) -> int:
    """Positions used: one past the largest id in ``positions`` and ``extra`` after it."""
    return max((int(p.max()) for p in positions if p.numel()), default=-1) + extra + 1


def lay_out(
    backend: Backend, blocks: Sequence[Block], video_start: int, chunk: torch.Tensor | None = None
) -> tuple[list[Block], torch.Tensor | None, int]:
    """``blocks`` (in time order) laid out one after another from ``video_start``, keys
    re-rotated, then a new ``chunk``'s positions right after them, each keeping its internal
    layout. Returns the moved blocks, the chunk's new positions and the first free position."""
    old = [b.meta.positions for b in blocks]
    layout = backend.contiguous_positions([*old, *([chunk] if chunk is not None else [])], video_start)
    moved = [
        Block(
            meta=replace(b.meta, positions=new),
            layers=backend.reposition_keys(b.layers, b.meta.positions, new),
        )
        for b, new in zip(blocks, layout, strict=False)
    ]
    end = max((int(p.max()) + 1 for p in layout), default=video_start)
    return moved, layout[-1] if chunk is not None else None, end
