"""Where blocks live. The encoder and the answer path only see ``BlockStore``.

This issue's store keeps every block in process at full precision; the tiered store
(device / host / disk, codecs, budgets) implements the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from .block import Block, BlockMeta


class BlockStore(ABC):
    """Holds blocks by id; ``metas()`` lists them in time order."""

    @abstractmethod
    def put(self, block: Block) -> None:
        """Store a new block; its id must be new and larger than every stored id."""

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


class InProcessStore(BlockStore):
    """Every block in one dict at full precision, on the device the model runs on."""

    tier = "device"

    def __init__(self) -> None:
        self._blocks: dict[int, Block] = {}
        self._bytes = 0

    def put(self, block: Block) -> None:
        if self._blocks and block.id <= next(reversed(self._blocks)):
            raise ValueError(f"block id {block.id} is not newer than the stored ones")
        self._blocks[block.id] = block
        self._bytes += block.nbytes

    def get(self, ids: Iterable[int]) -> list[Block]:
        return [self._blocks[i] for i in ids]

    def metas(self) -> list[BlockMeta]:
        return [b.meta for b in self._blocks.values()]

    def tier_of(self, block_id: int) -> str:
        if block_id not in self._blocks:
            raise KeyError(block_id)
        return self.tier

    def bytes_per_tier(self) -> dict[str, int]:
        return {self.tier: self._bytes}

    def __len__(self) -> int:
        return len(self._blocks)
