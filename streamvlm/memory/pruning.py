"""Temporal-redundancy pruning: visual tokens that repeat what was already kept are not encoded.

Consecutive video frames are mostly the same picture. At ingest, each merged visual token
(after Qwen2.5-VL's 2x2 merger or LLaVA-OneVision's projector, before the LLM) is compared
with the last *kept* token at the same spatial position, by cosine similarity; when they
are at least ``threshold`` alike the new token is dropped (or merged into the kept one) and
never reaches the LLM, the KV cache or a tier. Kept tokens keep their original positions
(invariant 1 of docs/architecture.md), so what remains is attended exactly as it would have been.

The comparison is against the last kept token, not the previous frame: a slow drift
cannot slip through frame by frame, because the reference only moves when a token is kept.

Modes:

- ``drop``: a redundant token is removed; its position's reference stays the kept token.
- ``merge``: a redundant token is averaged into its reference (ToMe-style, weighted by how
  many tokens the reference already stands for). When the reference token belongs to
  the chunk being encoded, the averaged embedding is what the LLM encodes; when it is in
  an earlier block, that block's KV is immutable (invariant 3), so only the reference used
  for later comparisons moves. With one temporal patch per chunk (Qwen2.5-VL's default
  2-frame chunks, or LLaVA-OneVision's 1-frame chunks) ``merge`` therefore differs from
  ``drop`` only in the reference.

A chunk always keeps at least ``min_kept`` of its tokens (the least redundant ones) and at
least one token, so every chunk becomes a block with a time and a position. A change of
token grid (the frame size changed) resets the references, as does ``reset()``.

Where a dropped token's reference is stored follows from the blocks' ``kept`` masks alone
(``find_references``): it is the last kept token at the same grid position before it. A
reset keeps its next chunk whole, so that search never crosses one. A block answered
without the blocks its references are in is completed with just those tokens
(``runtime/answering.py``), and its retrieval summary counts them, each moved by the drift
that a few dropped tokens re-encoded in the chunk's context measure (``CompletedSummaries``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check_pruning_options


@dataclass(frozen=True)
class PrunedChunk:
    """What survives of one chunk: the kept tokens' embeddings and which tokens they were."""

    embeds: torch.Tensor  # [kept tokens, hidden]
    kept: torch.Tensor  # [tokens seen] bool, on the embeddings' device


class TemporalPruner:
    """Per-stream pruning state: the last kept embedding at every spatial token position.

    Args:
        threshold: cosine similarity at or above which a token is redundant. Above 1.0
            nothing is ever dropped and the result equals no pruning exactly.
        mode: ``drop`` or ``merge`` (see the module docstring).
        min_kept: share of each chunk's tokens kept at least (0..1).
    """

    def __init__(self, threshold: float, mode: str = "drop", min_kept: float = 0.0):
        check_pruning_options(threshold, mode, min_kept)
        self.threshold = float(threshold)
        self.mode = mode
        self.min_kept = float(min_kept)
        self.reset()

    def reset(self) -> None:
        """Forget the references: the next chunk is kept whole (as after a scene cut)."""
        self._reference: torch.Tensor | None = None  # [positions, hidden] float32
        self._weight: torch.Tensor | None = None  # [positions]: tokens each reference stands for

    def prune(self, embeds: torch.Tensor, grid: tuple[int, int, int]) -> PrunedChunk:
        """Prune one chunk of merged visual tokens, ``[t * h * w, hidden]`` in ``grid`` order.

        Temporal patches are taken in order, each compared with the references left by
        the ones before it (in this chunk or earlier chunks).
        """
        t, h, w = grid
        per_patch = h * w
        if embeds.shape[0] != t * per_patch:
            raise ValueError(f"a {grid} token grid has {t * per_patch} tokens, the chunk {embeds.shape[0]}")
        tokens = embeds.reshape(t, per_patch, -1)
        out = tokens.clone() if self.mode == "merge" else tokens
        kept = torch.zeros(t, per_patch, dtype=torch.bool, device=embeds.device)
        similarity = torch.full((t, per_patch), -1.0, device=embeds.device)
        # where each position's reference lives in this chunk (its patch), -1: an earlier block
        owner = torch.full((per_patch,), -1, dtype=torch.long, device=embeds.device)
        if self._reference is not None and self._reference.shape != (per_patch, tokens.shape[-1]):
            self.reset()  # another frame size: nothing to compare with
        for p in range(t):
            x = tokens[p].float()
            if self._reference is None:
                self._reference, self._weight = x.clone(), torch.ones(per_patch, device=x.device)
                kept[p] = True
                owner[:] = p
                continue
            sim = F.cosine_similarity(x, self._reference, dim=-1).clamp(-1.0, 1.0)
            similarity[p] = sim
            keep = sim < self.threshold
            kept[p] = keep
            self._reference[keep], self._weight[keep] = x[keep], 1.0
            owner[keep] = p
            if self.mode == "merge":
                self._merge(~keep, x, out, owner)
        kept = kept.reshape(-1)
        self._keep_at_least(kept, similarity.reshape(-1), tokens.reshape(-1, tokens.shape[-1]))
        return PrunedChunk(out.reshape(-1, embeds.shape[-1])[kept], kept)

    def _merge(
        self, redundant: torch.Tensor, x: torch.Tensor, out: torch.Tensor, owner: torch.Tensor
    ) -> None:
        """Average redundant tokens into their references; into the chunk's own kept token
        too when the reference was kept in this chunk."""
        if not redundant.any():
            return
        weight = self._weight[redundant].unsqueeze(-1)
        self._reference[redundant] = (self._reference[redundant] * weight + x[redundant]) / (weight + 1)
        self._weight[redundant] += 1
        here = redundant & (owner >= 0)
        rows = owner[here]
        positions = here.nonzero().squeeze(-1)
        out[rows, positions] = self._reference[here].to(out.dtype)

    def _keep_at_least(self, kept: torch.Tensor, similarity: torch.Tensor, flat: torch.Tensor) -> None:
        """Keep the least redundant dropped tokens until ``min_kept`` (and one token) are kept.

        A token kept here becomes its position's reference, as any kept token does."""
        need = max(1, math.ceil(self.min_kept * kept.numel())) - int(kept.sum())
        if need <= 0:
            return
        candidates = (~kept).nonzero().squeeze(-1)
        chosen = candidates[similarity[candidates].argsort()[:need]]
        kept[chosen] = True
        # the reference of a position is its last kept token in the chunk
        per_patch = self._reference.shape[0]
        last_kept = kept.reshape(-1, per_patch)
        for position in (chosen % per_patch).unique().tolist():
            patch = int(last_kept[:, position].nonzero().max())
            self._reference[position] = flat[patch * per_patch + position].float()
            self._weight[position] = 1.0


def find_references(
    block_id: int, kept: torch.Tensor, per_patch: int, earlier: Iterable[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """Where each dropped token of a block has its reference: ``[2, tokens seen]`` long, the
    block id and the index among that block's kept tokens; ``-1`` for a kept token, or a
    reference not found.

    ``kept`` is the block's mask (``t * per_patch`` tokens in grid order, CPU); ``earlier``
    yields the ``(id, kept mask)`` of the blocks before it, newest first, and should end where
    the chain breaks (a block no longer held). The block's own earlier temporal patches come
    first, as the pruner compared them.
    """
    found = torch.full((2, kept.numel()), -1, dtype=torch.long)
    patches = kept.reshape(-1, per_patch)
    index = kept.cumsum(0).reshape(patches.shape) - 1
    wanting = [(p, ~patches[p]) for p in range(patches.shape[0])]  # each patch's dropped positions
    for p, want in wanting:
        for q in range(p - 1, -1, -1):
            _take(found[:, p * per_patch : (p + 1) * per_patch], want, patches[q], index[q], block_id)
    for source_id, mask in earlier:
        if not any(bool(want.any()) for _, want in wanting) or mask.numel() % per_patch:
            break  # all found, or another grid: a reset lies between and nothing older counts
        source = mask.reshape(-1, per_patch)
        source_index = mask.cumsum(0).reshape(source.shape) - 1
        for p, want in wanting:
            for q in range(source.shape[0] - 1, -1, -1):  # its newest patch first
                where = found[:, p * per_patch : (p + 1) * per_patch]
                _take(where, want, source[q], source_index[q], source_id)
    return found


def _take(
    found: torch.Tensor, want: torch.Tensor, source: torch.Tensor, index: torch.Tensor, source_id: int
) -> None:
    """Positions still wanting a reference that ``source`` (a patch's kept mask) holds: note
    them in ``found`` (a view: ``[2, per_patch]``) and stop wanting them (in place)."""
    hit = want & source
    if bool(hit.any()):
        found[0, hit] = source_id
        found[1, hit] = index[hit]
        want &= ~hit
