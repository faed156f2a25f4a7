"""The hierarchical block store: device (short-term) -> host (mid-term) -> disk (long-term).

Mechanism only: byte budgets are hard, and *which* block moves when a tier is full is
asked of an ``EvictionPolicy``. With a disk tier every block is written through to disk
when it is created, so the device and host tiers are caches of it: moving a block out of
host RAM costs nothing, and a crash loses only what was not yet flushed to disk. Without
a disk tier, a block pushed out of host RAM is gone (counted in ``dropped_blocks``).

The device tier holds blocks at full precision; the host and disk tiers hold them as their
codecs encode them. A stateful disk codec's per-layer state is handed to
``on_disk_codec_state`` whenever it changes, before the first block that needs it reaches
the disk, so that whatever survives a crash can be decoded.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

import torch

from .block import Block, BlockMeta, StoredBlock
from .codec import Codec
from .policy import Candidate, EvictionPolicy
from .store import BlockStore
from .tiers import MemoryTier, pin


class TieredStore(BlockStore):
    """Blocks across a device tier, a host tier and an optional disk tier, within byte budgets."""

    def __init__(
        self,
        *,
        device_bytes: int,
        host_bytes: int,
        device: torch.device,
        dtype: torch.dtype,
        host_codec: Codec,
        policy: EvictionPolicy,
        disk=None,
        disk_codec: Codec | None = None,
        on_disk_codec_state: Callable[[Codec], None] | None = None,
    ):
        self.device_tier: MemoryTier[Block] = MemoryTier("device", device_bytes)
        self.host_tier: MemoryTier[StoredBlock] = MemoryTier("host", host_bytes)
        self.disk = disk
        self.device, self.dtype = device, dtype
        self.host_codec = host_codec
        self.disk_codec = disk_codec or host_codec
        self.policy = policy
        self.on_disk_codec_state = on_disk_codec_state
        self._disk_state_version = self.disk_codec.state_version  # last version handed over
        # (kv_bits, kv_elements) of every block on disk, and their totals (kept up to date:
        # stats() asks for them, and a disk tier may hold many blocks)
        self._disk_kv: dict[int, tuple[int, int]] = {}
        self._disk_kv_total = [0, 0]
        self._metas: dict[int, BlockMeta] = {}
        self._last_used: dict[int, int] = {}
        self._clock = 0
        # blocks read, by who asked (``answer`` or ``window``) and the tier that served them
        self.hits: dict[str, Counter[str]] = {"answer": Counter(), "window": Counter()}
        self.load_s = 0.0  # seconds spent reading blocks for answers
        self.dropped_blocks = 0
        self.dropped_bytes = 0

    # ----- writing ---------------------------------------------------------------

    def put(self, block: Block) -> list[int]:
        """Store a new block on the device tier (and on disk), then restore the budgets.

        Returns the ids of blocks that left the store entirely (disk budget, or host
        budget without a disk tier), so indexes can forget them.
        """
        if self._metas and block.id <= next(reversed(self._metas)):
            raise ValueError(f"block id {block.id} is not newer than the stored ones")
        # encode first: a codec that rejects the block (e.g. fp16 overflow) leaves no trace of it
        stored = self.disk_codec.encode(block) if self.disk is not None else None
        self._metas[block.id] = block.meta
        self._touch(block.id)
        gone: list[int] = []
        if stored is not None:
            self.persist_disk_codec_state()  # before the block that may need it is on disk
            gone += self.disk.put(stored)
            self._count_on_disk(stored)
        self.device_tier.put(block)
        gone += self._rebalance()
        for block_id in gone:
            self._forget(block_id)
        return gone

    def _rebalance(self) -> list[int]:
        gone = []
        for block_id in self._victims(self.device_tier):
            stored = pin(self.host_codec.encode(self.device_tier.get(block_id)))  # may raise: pop after
            self.host_tier.put(stored)
            self.device_tier.pop(block_id)
        for block_id in self._victims(self.host_tier):
            stored = self.host_tier.pop(block_id)
            if self.disk is None:
                gone.append(block_id)
                self.dropped_blocks += 1
                self.dropped_bytes += stored.nbytes
        return gone

    def _victims(self, tier: MemoryTier) -> list[int]:
        excess = tier.overflow()
        if not excess:
            return []
        candidates = (Candidate(item.id, item.nbytes, self._last_used[item.id]) for item in tier)
        return self.policy.victims(candidates if self.policy.lazy else list(candidates), excess)

    def _forget(self, block_id: int) -> None:
        """Remove every trace of a block that left the store."""
        for tier in (self.device_tier, self.host_tier):
            if block_id in tier:
                tier.pop(block_id)
        self._metas.pop(block_id, None)
        self._last_used.pop(block_id, None)
        bits, elements = self._disk_kv.pop(block_id, (0, 0))
        self._disk_kv_total[0] -= bits
        self._disk_kv_total[1] -= elements

    def _count_on_disk(self, stored: StoredBlock) -> None:
        self._disk_kv[stored.id] = (stored.kv_bits, stored.kv_elements)
        self._disk_kv_total[0] += stored.kv_bits
        self._disk_kv_total[1] += stored.kv_elements

    def _touch(self, block_id: int) -> None:
        self._clock += 1
        self._last_used[block_id] = self._clock

    # ----- reading ---------------------------------------------------------------

    def get(self, ids: Iterable[int], purpose: str = "answer") -> list[Block]:
        """Blocks by id, decoded onto the device from whichever tier holds them.

        Device-tier blocks come back as stored; host and disk blocks are decoded (the
        host copies start asynchronously from pinned memory when CUDA is present).
        ``purpose`` (``answer`` or ``window``) only says which counters the reads go to.
        """
        started = time.perf_counter()
        blocks = []
        hits = self.hits[purpose]
        for block_id in ids:
            tier = self.tier_of(block_id)
            hits[tier] += 1
            self._touch(block_id)
            if tier == "device":
                blocks.append(self.device_tier.get(block_id))
            elif tier == "host":
                blocks.append(self.host_codec.decode(self.host_tier.get(block_id), self.device, self.dtype))
            else:
                blocks.append(self.disk_codec.decode(self.disk.get(block_id), self.device, self.dtype))
        if purpose == "answer":
            self.load_s += time.perf_counter() - started
        return blocks

    def metas(self) -> list[BlockMeta]:
        return list(self._metas.values())

    def tier_of(self, block_id: int) -> str:
        if block_id in self.device_tier:
            return "device"
        if block_id in self.host_tier:
            return "host"
        if self.disk is not None and block_id in self.disk:
            return "disk"
        raise KeyError(block_id)

    def bytes_per_tier(self) -> dict[str, int]:
        return {
            "device": self.device_tier.nbytes,
            "host": self.host_tier.nbytes,
            "disk": self.disk.nbytes if self.disk is not None else 0,
        }

    def kv_bits_per_element(self) -> dict[str, float | None]:
        """Stored bits of the keys and values held in each tier over their element count.

        Payload and per-block codec metadata count; positions, masks, summaries and the
        per-layer codec state (``codec_state_bytes``) do not. ``None`` for an empty tier.
        """
        totals = {
            "device": (self.device_tier.kv_bits, self.device_tier.kv_elements),
            "host": (self.host_tier.kv_bits, self.host_tier.kv_elements),
            "disk": tuple(self._disk_kv_total),
        }
        return {tier: bits / n if n else None for tier, (bits, n) in totals.items()}

    def codec_state_bytes(self) -> dict[str, int]:
        """Bytes of per-layer codec state (stored once per stream, not per block) per tier."""
        return {
            "device": 0,
            "host": self.host_codec.shared_bytes(),
            "disk": self.disk_codec.shared_bytes() if self.disk is not None else 0,
        }

    def persist_disk_codec_state(self) -> None:
        """Hand the disk codec's state to ``on_disk_codec_state`` if it changed since last time."""
        version = self.disk_codec.state_version
        if version != self._disk_state_version and self.on_disk_codec_state is not None:
            self.on_disk_codec_state(self.disk_codec)
            self._disk_state_version = version

    def __len__(self) -> int:
        return len(self._metas)

    # ----- resume ----------------------------------------------------------------

    def adopt_disk_blocks(self) -> None:
        """Take every block the disk tier holds as this store's (after reopening a session)."""
        for block_id in self.disk.ids():
            stored = self.disk.get(block_id)
            self._metas[block_id] = self.disk_codec.decode_meta(stored)
            self._count_on_disk(stored)
            self._touch(block_id)
