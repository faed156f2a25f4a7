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


class CompletedSummaries:
    """Summaries of pruned chunks as if nothing had been pruned (docs/pruning.md).

    A pruned chunk holds only the tokens that changed, so the mean of the keys it holds
    drifts away from the mean of the frame it shows, and a question about that frame
    stops finding it. Here a dropped token counts with its reference's de-rotated key (the
    last kept token at the same grid position, whose key exists: it was kept earlier), so
    the summary is that of the whole frame. The reference keys were computed in their own
    chunk's context, so this is close to, not equal to, the unpruned summary.

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
    ) -> torch.Tensor:
        """[layers, kv_heads * head_dim] float32 on the CPU: ``block_summary`` over the chunk's
        every token, a dropped one standing in as its reference's key. ``layers`` and
        ``positions`` hold the kept tokens, ``kept`` [tokens seen] marks them among the chunk's
        ``t * per_patch`` tokens in grid order."""
        kept = kept.to(layers[0][0].device).reshape(-1, per_patch)
        cos, sin = backend.rotary(positions)
        keys = torch.stack([rotate(k, cos, sin, inverse=True) for k, _ in layers])  # [L, H, kept, D]
        keys = keys.permute(0, 2, 1, 3).flatten(2)  # [L, kept, H * D], heads in summary order
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
        return completed.flatten(1, 2).mean(dim=1).cpu()
