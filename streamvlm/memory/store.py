"""Where blocks live. The encoder and the answer path only see ``BlockStore``.

``TieredStore`` (device / host / disk tiers with budgets and codecs) implements it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from .block import Block, BlockMeta


class BlockStore(ABC):
    """Holds blocks by id; ``metas()`` lists them in time order."""

    @abstractmethod
    def put(self, block: Block) -> list[int]:
        """Store a new block (its id larger than every stored id); return ids of blocks that left the store."""

    @abstractmethod
    def get(self, ids: Iterable[int]) -> list[Block]:
        """The blocks with these ids, in the order asked, wherever they live."""

    @abstractmethod
    def metas(self) -> list[BlockMeta]:
        """Metadata of every stored block, oldest first."""

    @abstractmethod
    def tier_of(self, block_id: int) -> str:
        """Name of the tier that holds a block."""

    @abstractmethod
    def bytes_per_tier(self) -> dict[str, int]:
        """Bytes of KV payload held in each tier."""

    def __len__(self) -> int:
        return len(self.metas())
