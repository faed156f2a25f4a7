"""Key summaries: one vector per block and layer that retrieval compares questions with.

ReKV's summary: the mean of a block's keys per KV head, concatenated. Keys are cached
after RoPE (invariant 2 of docs/architecture.md), and a rotated key depends on where it sits, so
summaries are taken over de-rotated keys: two blocks showing the same thing at different
times then get the same summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..models.base import Backend, LayerKV, rotate

# Dropped tokens a pruned chunk encodes besides its kept ones, to measure how far its
# stand-in keys drifted (``drift_probes``). What the summary needs is the drift's mean over
# the dropped tokens, and a sampled mean's error depends on the sample's size, not on how
# many tokens it is drawn from: a fixed count keeps the cost a few tokens per chunk at any
# frame size. Measured on 50 needle questions at 256 frames (docs/pruning.md): 2, 4 and 8
# probes retrieve as every dropped token encoded in the chunk's context does, 1 does not.
DRIFT_PROBES = 8


def block_summary(backend: Backend, layers: Sequence[LayerKV], positions: torch.Tensor) -> torch.Tensor:
    """[layers, kv_heads * head_dim] float32 on the CPU: mean pre-RoPE key per KV head, per layer."""
    cos, sin = backend.rotary(positions)  # one rotary evaluation serves every layer
    rows = [rotate(keys, cos, sin, inverse=True).mean(dim=1).flatten() for keys, _ in layers]
    return torch.stack(rows).cpu()


def drift_probes(kept: torch.Tensor, count: int = DRIFT_PROBES) -> torch.Tensor:
    """Slots (indices into a chunk's tokens in grid order, CPU long) of up to ``count`` of its
    dropped tokens, evenly spread over them so they sample the whole frame; empty when
    nothing was dropped."""
    dropped = (~kept.cpu()).nonzero().squeeze(-1)
    if dropped.numel() <= count:
        return dropped
    return dropped[torch.linspace(0, dropped.numel() - 1, count).round().long()]


class Probes(NamedTuple):
    """Dropped tokens of a chunk encoded over its context and kept tokens, for its summary only."""

    slots: torch.Tensor  # [probes] long, CPU: which of the chunk's tokens (grid order)
    layers: Sequence[LayerKV]  # their KV, per layer
    positions: torch.Tensor  # [position_dims, probes]: where they were encoded


def derotated_keys(backend: Backend, layers: Sequence[LayerKV], positions: torch.Tensor) -> torch.Tensor:
    """[layers, tokens, kv_heads * head_dim] float32: each token's pre-RoPE key, heads in summary order."""
    cos, sin = backend.rotary(positions)
    keys = torch.stack([rotate(k, cos, sin, inverse=True) for k, _ in layers])  # [L, H, T, D]
    return keys.permute(0, 2, 1, 3).flatten(2)


class CompletedSummaries:
    """Summaries of pruned chunks as if nothing had been pruned (docs/pruning.md).

    A pruned chunk holds only the tokens that changed, so the mean of the keys it holds
    drifts away from the mean of the frame it shows, and a question about that frame
    stops finding it. Here a dropped token counts with its reference's de-rotated key (the
    last kept token at the same grid position, whose key exists: it was kept earlier), so
    the summary is that of the whole frame.

    A reference's key was computed in its own chunk's context. In the deeper layers a
    token's key carries what it attended to, and unpruned, the dropped token would have
    attended this chunk's new content (a needle that just appeared): that is what sets
    the block apart for retrieval, and the reference lacks it. So the chunk also encodes
    a few dropped tokens (``Probes``, chosen by ``drift_probes``) over its context and
    kept tokens, and every stand-in key moves by the mean difference between the probes'
    keys and their stand-ins. With every dropped token probed, the summary is the mean of
    keys each computed in this chunk's context.

    State: the last kept de-rotated key at every grid position, per layer,
    ``[layers, positions, kv_heads * head_dim]`` float32 on the keys' device. At
    Qwen2.5-VL-7B geometry (28 layers, 4 x 128 KV dims) that is 28 x 512 x 4 bytes = 57 KB
    per grid position: 14.7 MB for 256-token frames, 57 MB for 1000-token frames.
    """

    def __init__(self) -> None:
        self._keys: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the reference keys (the pruner reset too: its next chunk is kept whole)."""
        self._keys = None

    def summary(
        self,
        backend: Backend,
        layers: Sequence[LayerKV],
        positions: torch.Tensor,
        kept: torch.Tensor,
        per_patch: int,
        probes: Probes | None = None,
    ) -> torch.Tensor:
        """[layers, kv_heads * head_dim] float32 on the CPU: ``block_summary`` over the chunk's
        every token, a dropped one standing in as its reference's key, moved by the drift the
        ``probes`` measured (if any). ``layers`` and ``positions`` hold the kept tokens,
        ``kept`` [tokens seen] marks them among the chunk's ``t * per_patch`` tokens in grid
        order."""
        kept = kept.to(layers[0][0].device).reshape(-1, per_patch)
        keys = derotated_keys(backend, layers, positions)  # [L, kept, H * D]
        if self._keys is None or self._keys.shape[:2] != (keys.shape[0], per_patch):
            if not bool(kept.all()):
                raise ValueError("a pruned chunk needs the reference keys of the chunks before it")
            self._keys = torch.zeros(keys.shape[0], per_patch, keys.shape[2], device=keys.device)
        completed = torch.empty(keys.shape[0], *kept.shape, keys.shape[2], device=keys.device)
        start = 0
        for p, row in enumerate(kept):
            count = int(row.sum())
            self._keys[:, row] = keys[:, start : start + count]
            completed[:, p] = self._keys
            start += count
        if bool(kept.all()):  # nothing stood in: exactly block_summary, bit for bit
            return block_summary(backend, layers, positions)
        completed = completed.flatten(1, 2)  # [L, tokens seen, H * D]
        if probes is not None and probes.slots.numel():
            measured = derotated_keys(backend, probes.layers, probes.positions).to(completed.device)
            slots = probes.slots.to(completed.device)
            drift = (measured - completed[:, slots]).mean(dim=1, keepdim=True)
            completed[:, ~kept.flatten()] += drift
        return completed.mean(dim=1).cpu()
