"""A block: the KV of one encoded chunk, for every layer (invariant 3 of docs/architecture.md).

Metadata and payload are separate so that a tier can move or encode the payload while
the index and the session keep the (small) metadata at hand. Both are immutable once
written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the runtime import would pull in transformers for a type alias
    from ..models.base import LayerKV


# BlockMeta fields a stored block keeps as tensors beside its KV (see codec.py); every
# other tensor of a StoredBlock is the codec's encoding of the KV.
META_TENSORS = ("positions", "kept", "summary")


@dataclass(frozen=True, slots=True)  # slots: one small record per block, for the whole stream
class BlockMeta:
    """What is known about a block without touching its KV.

    The tensors (``positions``, ``kept``, ``summary``) are ``None`` in a block held only on
    disk (``without_tensors``): its record there keeps them, and loading the block reads
    them back. What windows, selection and budgets read (``tokens``, ``tokens_seen``,
    ``max_position``) is there either way: from the tensors, or kept in ``spilled``.
    """

    id: int
    t_start: float  # stream seconds of the chunk's first frame
    t_end: float  # stream seconds of the chunk's last frame
    frames: int
    positions: torch.Tensor | None  # [position_dims, tokens] position of every kept token (CPU, long)
    kept: torch.Tensor | None  # [tokens seen] bool, which of the chunk's tokens were kept
    codec: str = "identity"
    # [layers, kv_heads * head_dim] float32: mean de-rotated key per KV head, for retrieval.
    # Computed from the full-precision keys when the block is made, so it does not
    # depend on how a tier encodes the block.
    summary: torch.Tensor | None = None
    # (tokens, tokens_seen, max_position) as the tensors gave them, in a record without them
    spilled: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if (self.positions is None or self.kept is None) and self.spilled is None:
            raise ValueError(f"block {self.id}: give positions and kept, or spilled")

    @property
    def tokens(self) -> int:
        """Tokens stored (kept) in this block."""
        return self.spilled[0] if self.positions is None else int(self.positions.shape[1])

    @property
    def tokens_seen(self) -> int:
        """The chunk's tokens before pruning."""
        return self.spilled[1] if self.kept is None else int(self.kept.numel())

    @property
    def max_position(self) -> int:
        """Largest position of a kept token (-1 for a block that kept none)."""
        if self.positions is None:
            return self.spilled[2]
        return int(self.positions.max()) if self.positions.numel() else -1

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the tensors this record holds (0 once they are left to the disk record)."""
        tensors = (self.positions, self.kept, self.summary)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def without_tensors(self) -> BlockMeta:
        """This record with its scalar fields only: what stays in RAM for a block held on disk."""
        figures = (self.tokens, self.tokens_seen, self.max_position)
        return replace(self, positions=None, kept=None, summary=None, spilled=figures)


@dataclass(frozen=True)
class Block:
    """A block's metadata and its per-layer KV (keys after RoPE), each [kv_heads, tokens, head_dim]."""

    meta: BlockMeta
    layers: tuple[LayerKV, ...]

    @property
    def id(self) -> int:
        return self.meta.id

    @cached_property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    @property
    def kv_bits(self) -> int:
        """Bits of the keys and values as held (full precision)."""
        return 8 * self.nbytes

    @cached_property
    def kv_elements(self) -> int:
        """Number of key and value elements over all layers."""
        return sum(k.numel() + v.numel() for k, v in self.layers)

    def __post_init__(self) -> None:
        for k, v in self.layers:
            if k.shape != v.shape or k.shape[1] != self.meta.tokens:
                raise ValueError(
                    f"block {self.meta.id}: KV shapes {tuple(k.shape)}/{tuple(v.shape)} do not match "
                    f"{self.meta.tokens} positions"
                )


@dataclass(frozen=True)
class StoredBlock:
    """A block as a host or disk tier holds it: JSON metadata and named CPU tensors.

    What the tensors are (raw KV, packed quantized codes, scales) is the codec's business;
    tiers only store, move and checksum them. ``meta["id"]`` is the block id.
    """

    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def id(self) -> int:
        return int(self.meta["id"])

    @cached_property
    def nbytes(self) -> int:
        # cached: tiers ask for it on every put, for every block they hold
        return sum(t.nbytes for t in self.tensors.values())

    @cached_property
    def kv_bits(self) -> int:
        """Bits of the encoded keys and values: payload and codec metadata, not the block's
        positions, mask or summary, nor state a codec keeps once per layer."""
        return 8 * sum(t.nbytes for name, t in self.tensors.items() if name not in META_TENSORS)

    @cached_property
    def kv_elements(self) -> int:
        """Number of key and value elements the block decodes to, over all layers."""
        shape = self.meta.get("kv_shape")
        if shape is None:  # written before kv_shape existed: identity, which stores raw KV
            return sum(t.numel() for name, t in self.tensors.items() if name not in META_TENSORS)
        return 2 * int(self.meta["layers"]) * math.prod(shape)


def recent_by_frames(metas: Sequence[BlockMeta], frames: int) -> list[BlockMeta]:
    """The newest blocks whose frame counts add up to at most ``frames``, oldest first.

    Blocks are atomic: a block that would overflow the budget is left out with
    everything older.
    """
    picked: list[BlockMeta] = []
    total = 0
    for meta in reversed(metas):
        if total + meta.frames > frames:
            break
        picked.append(meta)
        total += meta.frames
    return picked[::-1]
