"""In-memory tiers: a byte-counted map of block id -> item, with no opinion on what leaves.

The short-term (device) tier holds full-precision ``Block``s on the model's device; the
mid-term (host) tier holds codec-encoded ``StoredBlock``s in host RAM, pinned when CUDA
is present so reloads can overlap with compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import torch

from .block import Block, StoredBlock

Item = TypeVar("Item", Block, StoredBlock)


class MemoryTier(Generic[Item]):
    """Items by block id, with their byte total. ``capacity`` is enforced by the caller's policy.

    ``kv_bits`` / ``kv_elements`` total the stored bits of the keys and values and their
    element count, for bits per element (``nbytes`` also counts positions and summaries).
    """

    def __init__(self, name: str, capacity: int):
        self.name = name
        self.capacity = capacity
        self._items: dict[int, Item] = {}
        self.nbytes = 0
        self.kv_bits = 0
        self.kv_elements = 0

    def put(self, item: Item) -> None:
        if item.id in self._items:
            raise ValueError(f"{self.name} tier already holds block {item.id}")
        self._items[item.id] = item
        self._count(item, 1)

    def pop(self, block_id: int) -> Item:
        item = self._items.pop(block_id)
        self._count(item, -1)
        return item

    def _count(self, item: Item, sign: int) -> None:
        self.nbytes += sign * item.nbytes
        self.kv_bits += sign * item.kv_bits
        self.kv_elements += sign * item.kv_elements

    def get(self, block_id: int) -> Item:
        return self._items[block_id]

    def overflow(self) -> int:
        """Bytes above capacity (0 when within budget)."""
        return max(0, self.nbytes - self.capacity)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._items

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def pin(stored: StoredBlock) -> StoredBlock:
    """Page-lock a stored block's tensors when CUDA is present (faster, async host->device copies)."""
    if not torch.cuda.is_available():
        return stored
    return StoredBlock(meta=stored.meta, tensors={k: t.pin_memory() for k, t in stored.tensors.items()})
