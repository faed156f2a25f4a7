"""Where blocks live, as the block manager sees it: ``BlockStore``.

``TieredStore`` (an ordered list of tiers, one eviction policy) implements it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import NamedTuple

from .block import Block, BlockMeta


class Loaded(NamedTuple):
    """A block read from the store, and the name of the tier that served it (for hit counts)."""

    block: Block
    tier: str


class BlockStore(ABC):
    """Holds blocks by id; ``metas()`` lists them in time order."""

    @abstractmethod
    def put(self, block: Block) -> list[int]:
        """Store a new block (its id larger than every stored id); return ids of blocks that left the store."""

    @abstractmethod
    def get(self, ids: Iterable[int]) -> list[Loaded]:
        """The blocks with these ids, in the order asked, each with the tier that served it."""

    @abstractmethod
    def metas(self) -> list[BlockMeta]:
        """Metadata of every stored block, oldest first."""

    @abstractmethod
    def tier_of(self, block_id: int) -> str:
        """Name of the tier a block would be read from."""

    @abstractmethod
    def bytes_per_tier(self) -> dict[str, int]:
        """Bytes held in each tier, by tier name."""

    def __len__(self) -> int:
        return len(self.metas())
