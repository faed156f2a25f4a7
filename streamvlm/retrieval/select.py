"""Which blocks a question attends to, layer by layer.

Policy over the index mechanism: ``shared`` takes one top-k from scores summed over
layers (the same blocks everywhere); ``per_layer`` lets each layer take its own top-k
(ReKV). Either way the result can grow by temporal neighbours and always includes the
blocks the caller insists on (the recent window).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..registry import SELECTION_MODES


@dataclass(frozen=True)
class Selection:
    """Block ids attended per layer, oldest first, and how many candidates were left out."""

    layers: list[list[int]]
    left_out: int = 0  # candidate blocks attended by no layer (0: every candidate, lossless)

    @property
    def mode(self) -> str:
        """``lossless`` when every candidate block is attended, else ``retrieval``."""
        return "retrieval" if self.left_out else "lossless"

    @property
    def union(self) -> list[int]:
        return sorted({i for ids in self.layers for i in ids})

    @property
    def shared(self) -> bool:
        return all(ids == self.layers[0] for ids in self.layers)


def select_blocks(
    index,
    queries: torch.Tensor,
    candidates: list[int],
    top_k: int,
    mode: str = "shared",
    neighbours: int = 0,
    always: set[int] | frozenset[int] = frozenset(),
) -> Selection:
    """Pick blocks for each layer from ``candidates`` (sorted ids, all in ``index``).

    ``queries`` is [layers, dim]. A time filter is applied by the caller through
    ``candidates``, which reach the index as a FAISS id selector.
    """
    num_layers = queries.shape[0]
    if not candidates:
        return Selection([sorted(always)] * num_layers)
    # no id selector when nothing is filtered out: FAISS then scans without a lookup per id
    allowed = None if len(candidates) == len(index) else candidates
    if mode == "shared":
        # every candidate's score summed over layers; a flat search over all candidates is
        # what the sum needs, and costs O(blocks x layers x dim): milliseconds at hours of video
        hits = index.search(queries, k=len(candidates), allowed_ids=allowed, ordered=False)
        order = np.asarray(candidates)
        totals = np.zeros(len(order))
        for scores, ids in hits:
            found = ids >= 0
            totals[np.searchsorted(order, ids[found])] += scores[found]
        # best first, ties to the older block (stable sort over ids in time order)
        best = order[np.argsort(-totals, kind="stable")[:top_k]].tolist()
        chosen = _with_neighbours(best, candidates, neighbours) | set(always)
        return Selection([sorted(chosen)] * num_layers)
    hits = index.search(queries, k=min(top_k, len(candidates)), allowed_ids=allowed)
    per_layer = []
    for _scores, ids in hits:
        best = [b for b in ids.tolist() if b >= 0]
        per_layer.append(sorted(_with_neighbours(best, candidates, neighbours) | set(always)))
    return Selection(per_layer)


def _with_neighbours(ids: list[int], candidates: list[int], n: int) -> set[int]:
    """``ids`` plus up to ``n`` candidates on each side of each (in time order)."""
    if n == 0:
        return set(ids)
    out = set()
    for block_id in ids:
        at = bisect.bisect_left(candidates, block_id)
        out.update(candidates[max(0, at - n) : at + n + 1])
    return out


# The modes ``select_blocks`` implements (``MemoryConfig.selection``), each registered as
# the selector for that mode.
for _mode in ("shared", "per_layer"):
    SELECTION_MODES.add(_mode, partial(select_blocks, mode=_mode))
