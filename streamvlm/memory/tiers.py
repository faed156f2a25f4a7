"""The tier interface, and the two tiers that live in memory: device and host.

Every tier stores and returns ``Block``s; what it holds them as (full precision on the
model's device, codec-encoded in RAM or on disk, somewhere else entirely) is its own
business. A tier never chooses what leaves: it reports its entries and how far it is over
its budget, and its owner (``TieredStore``) asks an ``EvictionPolicy`` and pops the
victims. So a new tier is one new class implementing ``Tier``.

- ``DeviceTier`` (short-term) holds full-precision blocks as computed, on the model's device.
- ``HostTier`` (mid-term) holds them encoded by its codec in host RAM, pinned when CUDA
  is present so reloads can overlap with compute.
- ``disk_tier.DiskTier`` (long-term) holds them encoded in a session directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .. import transfer
from .block import Block, BlockMeta, StoredBlock
from .codec import BlockCodec


@dataclass(frozen=True)
class StagedPut:
    """A block encoded for one tier and not stored yet: ``commit()`` stores it.

    Staging first lets the owner make room for exactly ``nbytes`` before anything is
    written, and lets a codec reject a block before anything changed.
    """

    block_id: int
    nbytes: int  # what ``commit`` adds to the tier's ``nbytes``
    commit: Callable[[], None]


class Tier(ABC):
    """One level of block memory: blocks by id, within a byte budget its owner enforces.

    ``entries()`` lists ``(block id, bytes)`` in the order blocks entered the tier, which
    an eviction policy reads; ``overflow`` says how many bytes must leave. ``nbytes``
    counts everything held (KV, positions, mask, summary, a disk record's header);
    ``kv_bits`` / ``kv_elements`` count the stored bits of the keys and values and their
    element count, for bits per element.
    """

    name: str
    capacity: int | None  # byte budget; None: unbounded
    #: holds every block from its creation and survives a restart: its owner writes
    #: blocks through to it and adopts what it holds on resume
    persistent: bool = False
    #: what encodes its blocks (None: held as computed)
    codec: BlockCodec | None = None

    @abstractmethod
    def stage(self, block: Block, record: StoredBlock | None = None) -> StagedPut:
        """Encode ``block`` for this tier without storing it (raises if the tier cannot hold it).
        ``record``: the block as this tier's codec already encoded it for another tier, to take
        instead of encoding it again."""

    def record(self, block_id: int) -> StoredBlock | None:
        """A held block as its ``codec`` stored it, for a tier with the same codec (None: this
        tier keeps no such record)."""
        return None

    def put(self, block: Block) -> None:
        """Store a block the tier does not hold (overflow is its owner's to resolve)."""
        self.stage(block).commit()

    @abstractmethod
    def get(self, block_id: int, device: torch.device, dtype: torch.dtype) -> Block:
        """The block, decoded onto ``device`` in ``dtype`` (``KeyError`` if not held)."""

    @abstractmethod
    def meta(self, block_id: int) -> BlockMeta:
        """A held block's metadata, with no KV decoded."""

    @abstractmethod
    def pop(self, block_id: int) -> None:
        """Forget a held block."""

    @abstractmethod
    def entries(self) -> Iterator[tuple[int, int]]:
        """``(block id, bytes)`` of every held block, in the order they entered; lazy, so
        a policy may stop early. Do not put or pop while iterating."""

    @property
    @abstractmethod
    def held(self) -> Collection[int]:
        """The ids of the blocks held (membership and count; ``entries`` gives the order)."""

    def __contains__(self, block_id: object) -> bool:
        return block_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held: what ``capacity`` bounds."""

    @property
    @abstractmethod
    def kv_bits(self) -> int:
        """Stored bits of the held keys and values (payload and per-block codec metadata)."""

    @property
    @abstractmethod
    def kv_elements(self) -> int:
        """Key and value elements the held blocks decode to."""

    def overflow(self, extra: int = 0) -> int:
        """Bytes that must leave before ``extra`` more fit the budget (0 when they fit)."""
        if self.capacity is None:
            return 0
        return max(0, self.nbytes + extra - self.capacity)

    def codec_state_bytes(self) -> int:
        """Bytes of per-layer codec state the tier keeps once per stream (not per block)."""
        return 0

    # Optional hooks, deliberately empty here: only a tier holding files or connections
    # has anything to do.
    def sync(self) -> None:  # noqa: B027
        """Make the blocks put so far survive a crash (a no-op for a tier that does not persist)."""

    def flush(self) -> None:  # noqa: B027
        """Like ``sync``, and make drops durable and reopening fast (a no-op if nothing persists)."""

    def close(self) -> None:  # noqa: B027
        """Release what the tier holds open (files, locks); blocks already returned stay valid."""

    def checkpointed(self) -> None:  # noqa: B027
        """The session directory is consistent now (blocks, table, index, record): a tier
        that copies it elsewhere (``shared_tier.SharedDiskTier``) publishes it here."""


Item = TypeVar("Item", Block, StoredBlock)


class MemoryTier(Tier, Generic[Item]):
    """A tier in this process's memory: items by block id, with their byte totals.

    Subclasses say what an item is (``_encode``) and how it becomes a block again
    (``_decode``, ``meta``).
    """

    def __init__(self, name: str, capacity: int | None):
        self.name = name
        self.capacity = capacity
        self._items: dict[int, Item] = {}
        self._nbytes = self._kv_bits = self._kv_elements = 0

    @abstractmethod
    def _encode(self, block: Block, record: StoredBlock | None) -> Item: ...

    def stage(self, block: Block, record: StoredBlock | None = None) -> StagedPut:
        item = self._encode(block, record)
        return StagedPut(block.id, item.nbytes, lambda: self._store(item))

    def _store(self, item: Item) -> None:
        if item.id in self._items:
            raise ValueError(f"{self.name} tier already holds block {item.id}")
        self._items[item.id] = item
        self._count(item, 1)

    def pop(self, block_id: int) -> None:
        self._count(self._items.pop(block_id), -1)

    def _count(self, item: Item, sign: int) -> None:
        self._nbytes += sign * item.nbytes
        self._kv_bits += sign * item.kv_bits
        self._kv_elements += sign * item.kv_elements

    def entries(self) -> Iterator[tuple[int, int]]:
        return ((block_id, item.nbytes) for block_id, item in self._items.items())

    @property
    def held(self) -> Collection[int]:
        return self._items.keys()

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def kv_bits(self) -> int:
        return self._kv_bits

    @property
    def kv_elements(self) -> int:
        return self._kv_elements


class DeviceTier(MemoryTier[Block]):
    """Blocks at full precision, as computed: already on the model's device, in its dtype,
    so ``get`` returns them as held."""

    def __init__(self, capacity: int | None, name: str = "device"):
        super().__init__(name, capacity)

    def _encode(self, block: Block, record: StoredBlock | None) -> Block:
        return block

    def get(self, block_id: int, device: torch.device, dtype: torch.dtype) -> Block:
        return self._items[block_id]

    def meta(self, block_id: int) -> BlockMeta:
        return self._items[block_id].meta


class HostTier(MemoryTier[StoredBlock]):
    """Blocks encoded by ``codec`` in host RAM; pinned when CUDA is present, so reading one
    back starts an asynchronous copy to the device."""

    def __init__(self, capacity: int | None, codec: BlockCodec, name: str = "host"):
        super().__init__(name, capacity)
        self.codec = codec

    def _encode(self, block: Block, record: StoredBlock | None) -> StoredBlock:
        if record is None:
            return pin(self.codec.encode(block))
        # another tier's record (a disk record's tensors map its file): copied into RAM
        return pin(StoredBlock(meta=record.meta, tensors={n: t.clone() for n, t in record.tensors.items()}))

    def get(self, block_id: int, device: torch.device, dtype: torch.dtype) -> Block:
        return self.codec.decode(self._items[block_id], device, dtype)

    def meta(self, block_id: int) -> BlockMeta:
        return self.codec.decode_meta(self._items[block_id])

    def codec_state_bytes(self) -> int:
        return self.codec.shared_bytes()


def pin(stored: StoredBlock) -> StoredBlock:
    """Page-lock a stored block's tensors when CUDA is present (faster, async host->device
    copies), all in one buffer; a block encoded here already is (``BlockCodec.encode``)."""
    if not torch.cuda.is_available() or transfer.is_pinned(stored.tensors):
        return stored
    return StoredBlock(meta=stored.meta, tensors=transfer.to_host(stored.tensors))
