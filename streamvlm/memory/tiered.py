"""The hierarchical block store: an ordered list of tiers (device -> host -> disk) and one policy.

Mechanism only: byte budgets are hard, and *which* block moves when a tier is full is
asked of one ``EvictionPolicy``, the same for every tier. The store never asks which tier
it is talking to; it only knows each tier's place in the list and whether it is
``persistent``:

- a new block is encoded for every persistent tier first (a codec that rejects it leaves
  no trace), written through to them (each made room for before the write, so a disk
  budget is never passed, not even for a moment), then put into the first tier;
- a tier over its budget gives up the policy's victims: each moves to the next tier,
  unless that tier already holds it (a persistent tier holds every block: moving a block
  out of host RAM then costs nothing); a victim of the last tier leaves the store and is
  forgotten by every tier (``dropped_blocks``).

So with a disk tier, the device and host tiers are caches of it and a crash loses only
what was not yet made durable (``sync``/``flush``); without one, a block pushed out of
host RAM is gone.

The store keeps every block's ``BlockMeta`` in RAM. Once only persistent tiers hold a
block, that record keeps its scalar fields only: positions, kept mask and summary are in
the block's record on disk and come back when the block is loaded. So the RAM a block
costs outside the tiers' budgets does not grow with the stream (``metadata_bytes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .block import Block, BlockMeta, StoredBlock
from .policy import Candidate, EvictionPolicy
from .store import BlockStore, Loaded
from .tiers import StagedPut, Tier


class TieredStore(BlockStore):
    """Blocks across ``tiers`` (fastest first), within each tier's byte budget.

    Args:
        tiers: the tiers, in the order blocks move down them; names must differ.
        policy: chooses the victims of every tier.
        device, dtype: where and as what blocks are decoded when read.
    """

    def __init__(
        self, tiers: Sequence[Tier], policy: EvictionPolicy, *, device: torch.device, dtype: torch.dtype
    ):
        names = [tier.name for tier in tiers]
        if not tiers or len(set(names)) < len(names):
            raise ValueError(f"a store needs at least one tier and distinct tier names; got {names}")
        self.tiers = tuple(tiers)
        self.policy = policy
        self.device, self.dtype = device, dtype
        self._metas: dict[int, BlockMeta] = {}  # every block held, oldest first
        self._meta_bytes = 0  # tensor bytes the records in _metas hold
        self._last_used: dict[int, int] = {}
        self._clock = 0
        self.dropped_blocks = 0  # blocks that left the store entirely, whatever the cause
        self.dropped_bytes = 0  # their bytes in the tier that gave them up

    # ----- writing ---------------------------------------------------------------

    def put(self, block: Block) -> list[int]:
        """Store a new block, then bring every tier within its budget.

        Returns the ids of blocks that left the store entirely, so indexes can forget them.
        """
        if self._metas and block.id <= next(reversed(self._metas)):
            raise ValueError(f"block id {block.id} is not newer than the stored ones")
        # encode first: a codec that rejects the block (e.g. fp16 overflow) leaves no trace of it
        staged = [(i, tier.stage(block)) for i, tier in enumerate(self.tiers) if tier.persistent]
        gone: list[int] = []
        for i, write in staged:
            gone += self._commit(i, write)
        self._remember(block.meta)
        self._touch(block.id)
        if block.id not in self.tiers[0]:
            self.tiers[0].put(block)
        gone += self._rebalance()
        self._spill_meta(block.id)  # a store whose first tier persists keeps no tensors
        return gone

    def _commit(self, i: int, write: StagedPut) -> list[int]:
        """Store a staged block in tier ``i``. A persistent tier makes room first, so its budget
        is never passed even for a moment (a crash would leave it so); the others are brought
        within budget right after, by ``_rebalance``, so a new block may itself move down."""
        tier = self.tiers[i]
        gone = self._evict(i, self._victims(tier, write.nbytes)) if tier.persistent else []
        write.commit()
        return gone

    def _rebalance(self) -> list[int]:
        gone = []
        for i, tier in enumerate(self.tiers):
            gone += self._evict(i, self._victims(tier))
        return gone

    def _victims(self, tier: Tier, extra: int = 0) -> dict[int, int]:
        """The policy's victims in ``tier`` (id -> bytes, in eviction order) to fit ``extra`` more bytes."""
        excess = tier.overflow(extra)
        if not excess:
            return {}
        sizes: dict[int, int] = {}

        def candidates():
            for block_id, nbytes in tier.entries():
                sizes[block_id] = nbytes
                yield Candidate(block_id, nbytes, self._last_used.get(block_id, 0))

        chosen = self.policy.victims(candidates() if self.policy.lazy else list(candidates()), excess)
        return {block_id: sizes[block_id] for block_id in chosen}

    def _evict(self, i: int, victims: dict[int, int]) -> list[int]:
        """Move tier ``i``'s victims to the next tier; those of the last tier leave the store."""
        tier = self.tiers[i]
        below = self.tiers[i + 1] if i + 1 < len(self.tiers) else None
        gone = []
        for block_id, nbytes in victims.items():
            if block_id not in tier:
                continue  # left the store while making room below for an earlier victim
            if below is None:
                self._forget(block_id)
                self.dropped_blocks += 1
                self.dropped_bytes += nbytes
                gone.append(block_id)
                continue
            if block_id not in below:
                block = tier.get(block_id, self.device, self.dtype)
                record = self._record(block_id, below)
                # a tier without a record to take is staged as before, so tier classes written
                # against stage(block) alone still plug in (tests/test_memory_tiers.py)
                staged = below.stage(block) if record is None else below.stage(block, record)
                gone += self._commit(i + 1, staged)
            tier.pop(block_id)  # after: a tier below that rejects the block leaves it here
            self._spill_meta(block_id)
        return gone

    def _record(self, block_id: int, target: Tier) -> StoredBlock | None:
        """The block as ``target``'s codec already stored it in a persistent tier (written
        through there when it was new), so that ``target`` takes that record instead of
        encoding the block again; None if no tier holds one."""
        if target.codec is None:
            return None
        for tier in self.tiers:
            if tier is not target and tier.persistent and tier.codec is target.codec and block_id in tier:
                return tier.record(block_id)
        return None

    def _forget(self, block_id: int) -> None:
        """Remove every trace of a block that left the store."""
        for tier in self.tiers:
            if block_id in tier:
                tier.pop(block_id)
        meta = self._metas.pop(block_id, None)
        if meta is not None:
            self._meta_bytes -= meta.tensor_bytes
        self._last_used.pop(block_id, None)

    def _remember(self, meta: BlockMeta) -> None:
        self._metas[meta.id] = meta
        self._meta_bytes += meta.tensor_bytes

    def _spill_meta(self, block_id: int) -> None:
        """Keep a block's scalar metadata only, once no tier outside the persistent ones
        holds it (its tensors are in the persistent tiers' records)."""
        meta = self._metas.get(block_id)
        if (
            meta is not None
            and meta.tensor_bytes
            and not any(block_id in tier for tier in self.tiers if not tier.persistent)
        ):
            self._meta_bytes -= meta.tensor_bytes
            self._metas[block_id] = meta.without_tensors()

    def _touch(self, block_id: int) -> None:
        self._clock += 1
        self._last_used[block_id] = self._clock

    # ----- reading ---------------------------------------------------------------

    def get(self, ids: Iterable[int]) -> list[Loaded]:
        """Blocks by id, decoded onto the device from the fastest tier holding each.

        Device-tier blocks come back as held; others are decoded (host copies start
        asynchronously from pinned memory when CUDA is present). A read counts as a use
        for the policy.
        """
        loaded = []
        for block_id in ids:
            tier = self._holder(block_id)
            self._touch(block_id)
            loaded.append(Loaded(tier.get(block_id, self.device, self.dtype), tier.name))
        return loaded

    def _holder(self, block_id: int) -> Tier:
        for tier in self.tiers:
            if block_id in tier:
                return tier
        raise KeyError(block_id)

    def meta(self, block_id: int) -> BlockMeta:
        """One block's metadata, as ``metas`` lists it (``KeyError`` if the store lacks it)."""
        return self._metas[block_id]

    def metas(self) -> list[BlockMeta]:
        """Every block's metadata, oldest first; a block held only by persistent tiers has
        no tensors here (``BlockMeta.without_tensors``)."""
        return list(self._metas.values())

    @property
    def metadata_bytes(self) -> int:
        """Tensor bytes the store's block records hold in RAM: those of blocks a tier in
        memory holds (bounded by its budget), none for blocks held only on disk."""
        return self._meta_bytes

    def tier_of(self, block_id: int) -> str:
        return self._holder(block_id).name

    def __len__(self) -> int:
        return len(self._metas)

    # ----- per-tier figures ------------------------------------------------------

    def bytes_per_tier(self) -> dict[str, int]:
        return {tier.name: tier.nbytes for tier in self.tiers}

    def kv_bits_per_element(self) -> dict[str, float | None]:
        """Stored bits of the keys and values held in each tier over their element count.

        Payload and per-block codec metadata count; positions, masks, summaries and the
        per-layer codec state (``codec_state_bytes``) do not. ``None`` for an empty tier.
        """
        return {
            tier.name: tier.kv_bits / tier.kv_elements if tier.kv_elements else None for tier in self.tiers
        }

    def codec_state_bytes(self) -> dict[str, int]:
        """Bytes of per-layer codec state (stored once per stream, not per block) per tier."""
        return {tier.name: tier.codec_state_bytes() for tier in self.tiers}

    # ----- durability and resume -------------------------------------------------

    def sync(self) -> None:
        """Make every block put so far survive a crash (the persistent tiers' business)."""
        for tier in self.tiers:
            tier.sync()

    def flush(self) -> None:
        """``sync``, and make drops durable and reopening fast."""
        for tier in self.tiers:
            tier.flush()

    def checkpointed(self) -> None:
        """Tell every tier the session directory is consistent (a checkpoint ended)."""
        for tier in self.tiers:
            tier.checkpointed()

    def adopt(self) -> list[int]:
        """Take every block the persistent tiers hold as this store's (a resumed session).

        Then brings every tier within its budget (a session may resume with a smaller
        one); returns the ids of the blocks that left the store for it.
        """
        holders = {}
        for tier in self.tiers:
            if tier.persistent:
                for block_id, _ in tier.entries():
                    holders.setdefault(block_id, tier)
        for block_id in sorted(holders):
            if block_id not in self._metas:
                self._remember(holders[block_id].meta(block_id).without_tensors())
                self._touch(block_id)
        return self._rebalance()

    def close(self) -> None:
        """Close every tier (a persistent tier makes what it holds durable first)."""
        for tier in self.tiers:
            tier.close()
