"""``BlockMemory``: the only object a session talks to about blocks.

Modelled on vLLM v1's ``KVCacheManager`` in front of its ``BlockPool``: the session asks
for the blocks of its encoding window, commits each new block, asks which blocks a
question attends and loads them; it never touches a tier, the index or a codec. Behind
this front the manager owns:

- the tiers (``TieredStore``: device, host, disk, each within its byte budget),
- the retrieval index over the blocks' key summaries,
- block ids (one counter, so that ids grow with stream time),
- the checkpoint schedule and the session directory's files (``checkpoint.py``),
- the read counters a session reports (``MemoryStats``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..config import MemoryConfig
from ..errors import ConfigError, StreamVLMError
from ..retrieval.layered import LayeredIndex
from ..retrieval.segmented import SegmentedIndex
from ..retrieval.select import Selection, select_blocks
from . import checkpoint as files
from .block import Block, BlockMeta, recent_by_frames
from .codec import get_block_codec
from .disk import DiskLog
from .disk_tier import DiskTier
from .policy import get_policy
from .shared_tier import SharedDiskTier
from .tiered import TieredStore
from .tiers import DeviceTier, HostTier

# A full checkpoint rewrites the block table and the index: O(blocks held). It runs when
# the blocks since the last one reach this fraction of all blocks (at least FULL_MIN), so
# its cost per block stays constant however long the stream, and a resume scans at most
# that fraction of the blocks past the table.
FULL_FRACTION = 0.1
FULL_MIN = 64
# session.json keys the memory writes; the rest is the session's own record
_MEMORY_KEYS = ("format", "model", "memory", "next_block_id")
# every per-tier figure names these tiers, held or not, so reports keep one shape
_TIER_NAMES = ("device", "host", "disk")


@dataclass(frozen=True)
class MemoryStats:
    """What the memory holds and how it was read; the memory half of ``SessionStats``."""

    blocks: int
    tokens_stored: int
    bytes_per_tier: dict[str, int]
    kv_bits_per_element: dict[str, float | None]
    codec_state_bytes: dict[str, int]  # per-layer codec state, once per stream (not per block)
    hits_per_tier: dict[str, int]  # blocks loaded for questions, by the tier they came from
    # window blocks read while encoding (host/disk: window too big for the device)
    window_hits_per_tier: dict[str, int]
    load_s: float  # seconds spent loading blocks for questions
    dropped_blocks: int  # blocks that left memory entirely (host budget without disk, or disk budget)
    indexed_blocks: int
    # host RAM outside every tier budget (anonymous memory, not page cache): the tensors of
    # block metadata (positions, kept mask, key summary) of blocks a tier in memory holds,
    # and the index's in-RAM vectors. With a disk tier both stay bounded however long the
    # stream (they spill with the block); without one, by the host budget
    metadata_bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class BlockMemory:
    """A stream's blocks: stored across tiers within budgets, indexed, checkpointed.

    Create one with ``BlockMemory.create(config, backend)`` for a new stream or
    ``BlockMemory.open(directory, backend)`` to resume one from its directory.
    """

    def __init__(
        self,
        config: MemoryConfig,
        backend,
        tiers: tuple[TieredStore, DiskTier | None],
        index: LayeredIndex | SegmentedIndex,
        next_block_id: int = 0,
    ):
        self.config = config
        self.num_layers = backend.num_layers
        self._model = backend.name
        self._store, self._disk = tiers
        self._index = index
        self._next_block_id = next_block_id
        self._directory = Path(config.disk_dir) if config.disk_dir is not None else None
        self._unflushed = 0  # blocks committed since the last checkpoint
        self._blocks_at_full = len(self._store)  # blocks held at the last full checkpoint (table + index)
        self._hits = {"answer": Counter(), "window": Counter()}  # reads by purpose and serving tier
        self._load_s = 0.0

    # ----- opening ---------------------------------------------------------------

    @classmethod
    def create(cls, config: MemoryConfig, backend, mirror=None) -> BlockMemory:
        """Empty memory for a new stream (its directory, if any, must not hold a session).

        ``mirror`` (a ``mirror.SessionMirror``) makes the disk tier shared: the directory
        is published through it at every checkpoint (``shared_tier.SharedDiskTier``).
        """
        if config.disk_dir is not None and files.holds_session(Path(config.disk_dir)):
            raise files.SessionResumeError(
                f"{config.disk_dir} already holds a session; resume it with Session.resume(dir, engine) "
                "or pick an empty directory"
            )
        return cls(config, backend, _build_store(config, backend, mirror), _new_index(config, backend))

    @classmethod
    def open(cls, directory: Path, backend, overrides: dict, mirror=None) -> tuple[BlockMemory, dict]:
        """Reopen a stream's memory from its directory: its blocks, index and codec state as of
        the last flushed block. Returns the memory and the session's own saved record, with
        ``recovered``: the metadata of blocks written after that record was saved.

        ``overrides`` replace saved ``MemoryConfig`` fields that do not change what is stored;
        ``mirror`` publishes the directory from now on, as in ``create``.
        """
        record = files.read_record(directory)
        if record["model"] != backend.name:
            raise files.SessionResumeError(
                f"{directory} was written by model {record['model']!r}, not {backend.name!r}; "
                f"resume it with StreamVLM.from_pretrained({record['model']!r})"
            )
        fixed = set(overrides) - files.RESUME_OVERRIDABLE
        if fixed:
            raise files.SessionResumeError(
                f"cannot change {', '.join(sorted(fixed))} when resuming; they define what is stored"
            )
        config = MemoryConfig(**{**record["memory"], **overrides, "disk_dir": str(directory)})
        store, disk = _build_store(config, backend, mirror)
        try:
            files.load_codec_state(directory, disk.codec, blocks=len(disk))
            store.adopt()  # blocks past a smaller disk budget leave; the index is rebuilt below
        except BaseException:
            store.close()  # release the directory's lock: the caller may fix it and resume again
            raise
        memory = cls(config, backend, (store, disk), _load_index(directory, config, backend, store, disk))
        # whole records (read back from disk): the session rebuilds its counters from them
        recovered = [disk.meta(m.id) for m in store.metas() if m.id >= record["next_block_id"]]
        memory._next_block_id = recovered[-1].id + 1 if recovered else record["next_block_id"]
        session = {k: v for k, v in record.items() if k not in _MEMORY_KEYS}
        return memory, {**session, "recovered": recovered}

    # ----- the encoder's side ----------------------------------------------------

    def window(self, frames: int) -> list[Block]:
        """The newest blocks covering at most ``frames`` frames, oldest first, on the device."""
        return self._read((m.id for m in recent_by_frames(self.metas(), frames)), "window")

    def commit(
        self,
        layers,
        *,
        t_start: float,
        t_end: float,
        frames: int,
        positions: torch.Tensor,
        kept: torch.Tensor,
        summary: torch.Tensor,
        session_record: dict,
    ) -> BlockMeta:
        """Store a new block (it gets the next id), index it, and checkpoint when due.

        ``session_record`` is what the session saves beside the blocks at a checkpoint
        (its stream counters as of this block): a dict of JSON values.
        """
        meta = BlockMeta(
            id=self._next_block_id,
            t_start=t_start,
            t_end=t_end,
            frames=frames,
            positions=positions.cpu(),
            kept=kept,
            summary=summary,
        )
        gone = self._store.put(Block(meta=meta, layers=layers))
        self._index.add(meta.id, summary)
        if gone:
            self._index.remove(gone)
        self._next_block_id += 1
        self._unflushed += 1
        if self._directory is not None and self._unflushed >= self.config.disk_flush_blocks:
            self.checkpoint(session_record)
        return meta

    # ----- the question's side ---------------------------------------------------

    def select(
        self,
        plan,
        queries: Callable[[], torch.Tensor] | None = None,
        pending: BlockMeta | None = None,
        fixed_tokens: int = 0,
    ) -> Selection:
        """Blocks a question attends to (besides the sinks), per layer, oldest first.

        ``plan`` is the question's ``AnswerPlan``. Candidates are the blocks overlapping
        ``[plan.since, plan.until]``. Without ``top_k`` (and ``answer_blocks``) every
        candidate is attended: lossless. With ``top_k`` the index picks blocks for
        the question's queries (``queries()``, [layers, dim], read only when retrieval runs:
        it costs a prefill of the question); the blocks of the ``answer_window`` newest frames and
        the ``answer_blocks`` newest candidates are always added. ``pending`` is a block
        not stored yet (the chunk being filled): the newest candidate, attended where a
        stored block there would be, never retrieved (the index does not hold it).

        With ``plan.answer_tokens``, the blocks' tokens and ``fixed_tokens`` (sink,
        question, answer) stay within it: what does not fit is filled best first, the
        newest window frames, then the blocks that match ``queries`` best.
        """
        # Per question, Python touches each block at most once, and only for a time range:
        # at hours of video (thousands of blocks) every per-block step here costs milliseconds
        metas = [*self.metas(), *([pending] if pending else [])]
        if plan.since is not None or plan.until is not None:
            metas = [m for m in metas if _overlaps(m, plan.since, plan.until)]

        def tokens(block_id: int) -> int:  # of the few blocks a selection holds
            return (
                pending if pending is not None and block_id == pending.id else self._store.meta(block_id)
            ).tokens

        if plan.blocks is not None:
            return self._named(plan, fixed_tokens, pending)
        budget = None if plan.answer_tokens is None else plan.answer_tokens - fixed_tokens
        recent = recent_by_frames(metas, plan.answer_window)
        if plan.answer_blocks:
            recent += metas[len(metas) - plan.answer_blocks :]
        retrieve = partial(
            self._retrieve,
            queries,
            [m.id for m in metas if m is not pending],
            plan.selection,
            plan.neighbours,
        )
        if plan.top_k is None and plan.answer_blocks is None:
            chosen, top_k = Selection([[m.id for m in metas]] * self.num_layers), len(metas)
        elif plan.top_k is None:
            chosen, top_k = Selection([sorted({m.id for m in recent})] * self.num_layers), 0
        else:
            chosen, top_k = retrieve(plan.top_k, {m.id for m in recent}), plan.top_k
        if budget is not None and _cost(chosen, tokens) > budget:
            chosen = self._fill(budget, tokens, recent, top_k, retrieve)
        # every block chosen is a candidate (retrieved from them, or recent ones)
        return Selection(chosen.layers, left_out=len(metas) - len(chosen.union))

    def _named(self, plan, fixed_tokens: int, pending: BlockMeta | None) -> Selection:
        """The blocks a question names outright (``plan.blocks``), all stored and within budget."""
        held = {m.id: m.tokens for m in self.metas()}
        missing = [b for b in plan.blocks if b not in held]
        if missing:
            raise ConfigError(f"blocks {missing} are not in this session's memory")
        named = Selection([sorted(plan.blocks)] * self.num_layers)
        need = sum(held[b] for b in set(plan.blocks)) + fixed_tokens
        if plan.answer_tokens is not None and need > plan.answer_tokens:
            raise ConfigError(
                f"blocks {sorted(plan.blocks)} need {need} tokens with the question, over "
                f"answer_tokens={plan.answer_tokens}; name fewer blocks or raise answer_tokens"
            )
        return Selection(named.layers, left_out=len(held) + (pending is not None) - len(set(plan.blocks)))

    def _retrieve(self, queries, candidates, mode, neighbours, top_k: int, always: set[int]) -> Selection:
        if queries is None:
            raise ValueError("retrieval needs the question's queries")
        return select_blocks(
            self._index, queries(), candidates, top_k, mode=mode, neighbours=neighbours, always=always
        )

    def _fill(
        self, budget: int, tokens: Callable[[int], int], recent: list[BlockMeta], top_k: int, retrieve
    ) -> Selection:
        """The most blocks within ``budget`` tokens: the recent ones newest first, then the
        largest number of retrieved ones (up to ``top_k``) that still fits."""
        always: set[int] = set()
        spent = 0
        for meta in reversed(recent):
            if meta.id not in always and spent + meta.tokens <= budget:
                always.add(meta.id)
                spent += meta.tokens
        fits = Selection([sorted(always)] * self.num_layers)
        low, high = 1, top_k  # bisect the retrieved count: the context grows with it
        while low <= high:
            middle = (low + high) // 2
            candidate = retrieve(middle, always)
            if _cost(candidate, tokens) <= budget:
                fits, low = candidate, middle + 1
            else:
                high = middle - 1
        return fits

    def load(self, ids: Iterable[int]) -> list[Block]:
        """Blocks by id, decoded onto the device from whichever tier holds them, for an answer."""
        started = time.perf_counter()
        blocks = self._read(ids, "answer")
        self._load_s += time.perf_counter() - started
        return blocks

    def _read(self, ids: Iterable[int], purpose: str) -> list[Block]:
        loaded = self._store.get(ids)
        self._hits[purpose].update(tier for _, tier in loaded)
        return [block for block, _ in loaded]

    # ----- what it holds ---------------------------------------------------------

    def metas(self) -> list[BlockMeta]:
        """Metadata of every block held, oldest first. A block held only on disk has its
        scalar fields only (``positions``, ``kept`` and ``summary`` are ``None``): ``load``
        it for those."""
        return self._store.metas()

    def tier_of(self, block_id: int) -> str:
        """Name of the tier that holds a block."""
        return self._store.tier_of(block_id)

    def indexed_ids(self) -> list[int]:
        """Block ids the retrieval index holds (the same as ``metas()``'s)."""
        return sorted(int(i) for i in self._index.ids())

    @property
    def next_block_id(self) -> int:
        """The id the next committed block gets (ids grow with stream time)."""
        return self._next_block_id

    @property
    def blocks_since_checkpoint(self) -> int:
        return self._unflushed

    def stats(self) -> MemoryStats:
        metas = self.metas()
        return MemoryStats(
            blocks=len(metas),
            tokens_stored=sum(m.tokens for m in metas),
            bytes_per_tier=dict.fromkeys(_TIER_NAMES, 0) | self._store.bytes_per_tier(),
            kv_bits_per_element=dict.fromkeys(_TIER_NAMES) | self._store.kv_bits_per_element(),
            codec_state_bytes=dict.fromkeys(_TIER_NAMES, 0) | self._store.codec_state_bytes(),
            hits_per_tier=dict(self._hits["answer"]),
            window_hits_per_tier=dict(self._hits["window"]),
            load_s=self._load_s,
            dropped_blocks=self._store.dropped_blocks,
            indexed_blocks=len(self._index),
            metadata_bytes=self._store.metadata_bytes + self._index.nbytes,
        )

    @property
    def spilled_index_bytes(self) -> int:
        """Bytes of the retrieval index's sealed segments in the session directory (0
        without a disk tier): the summaries that left RAM."""
        return self._index.disk_bytes

    @property
    def disk(self) -> DiskTier | None:
        """The disk tier, for tools that inspect or verify it (``None`` without one)."""
        return self._disk

    # ----- durability ------------------------------------------------------------

    def checkpoint(self, session_record: dict, full: bool | None = None) -> None:
        """Make the memory durable: blocks (fsync), when due the block table and the index,
        and last ``session.json`` (with ``session_record``), atomically.

        ``full=None`` decides by the schedule above; ``True`` forces table and index.
        """
        if self._directory is None:
            raise ConfigError("this session has no disk tier; set MemoryConfig.disk_dir to checkpoint it")
        held = len(self._store)
        if full is None:
            full = held - self._blocks_at_full >= max(FULL_MIN, FULL_FRACTION * held)
        if full:
            self._store.flush()
            self._index.save(self._directory / files.INDEX_DIR)
            self._blocks_at_full = held
        else:
            self._store.sync()
        files.write_record(
            self._directory,
            {
                "model": self._model,
                "memory": dataclasses.asdict(self.config),
                "next_block_id": self._next_block_id,
                **session_record,
            },
        )
        self._unflushed = 0
        self._store.checkpointed()  # a shared tier publishes the now consistent directory

    def close(self) -> None:
        """Close the tiers (the disk tier releases its directory); call after the last checkpoint."""
        self._store.close()


def _build_store(config: MemoryConfig, backend, mirror=None) -> tuple[TieredStore, DiskTier | None]:
    """The tiers ``config`` asks for, fastest first, and the disk tier among them (if any):
    shared through ``mirror`` when one is given."""
    host_codec = get_block_codec(config.host_codec)
    tiers = [DeviceTier(config.device_bytes), HostTier(config.host_bytes, host_codec)]
    disk = None
    if mirror is not None and config.disk_dir is None:
        raise ConfigError("a shared long-term tier mirrors a session directory: set MemoryConfig.disk_dir")
    if config.disk_dir is not None:
        # the manager decides when to make the disk durable (checkpoint), not the log
        log = DiskLog(config.disk_dir, max_bytes=config.disk_bytes, flush_every=None, flush_seconds=None)
        save_state = partial(files.save_codec_state, Path(config.disk_dir))
        codec = get_block_codec(config.disk_codec)
        # one codec for both tiers when they name the same: a block is then encoded once, when
        # it is written through to disk, and the host tier takes that record when the device
        # demotes the block (TieredStore._record), instead of encoding it a second time
        codec = host_codec if codec.name == host_codec.name else codec
        if mirror is None:
            disk = DiskTier(log, codec, on_codec_state=save_state)
        else:
            disk = SharedDiskTier(log, codec, mirror, on_codec_state=save_state)
        tiers.append(disk)
    store = TieredStore(tiers, get_policy(config.eviction), device=backend.device, dtype=backend.dtype)
    return store, disk


def _new_index(config: MemoryConfig, backend) -> LayeredIndex | SegmentedIndex:
    """The retrieval index: with a disk tier, one whose older rows are sealed to files in the
    session directory (RAM stays bounded as blocks spill to disk); without, all in RAM (the
    host budget bounds the blocks, and the index forgets the ones dropped)."""
    layout = {"groups": config.index_groups, "metric": config.metric}
    dims = (backend.num_layers, backend.num_kv_heads * backend.head_dim)
    if config.disk_dir is None:
        return LayeredIndex(*dims, **layout)
    return SegmentedIndex(*dims, Path(config.disk_dir) / files.INDEX_DIR, **layout)


def _load_index(
    directory: Path, config: MemoryConfig, backend, store: TieredStore, disk: DiskTier
) -> SegmentedIndex:
    """The saved index brought up to date from the blocks' stored summaries.

    The index is saved at full checkpoints only: blocks written since are added from their
    summaries (read back from their records on ``disk``), blocks dropped since are
    removed. A missing or damaged index is rebuilt.
    """
    try:
        index = SegmentedIndex.load(directory / files.INDEX_DIR)
    except (OSError, ValueError, StreamVLMError, RuntimeError):
        index = _new_index(config, backend)
    held = {m.id for m in store.metas()}
    indexed = {int(i) for i in index.ids()}
    stale = sorted(indexed - held)
    if stale:
        index.remove(stale)
    for block_id in sorted(held - indexed):
        index.add(block_id, disk.meta(block_id).summary)
    return index


def _cost(selection: Selection, tokens: Callable[[int], int]) -> int:
    """Tokens of the largest layer context ``selection`` makes (layers may differ)."""
    return max((sum(tokens(b) for b in ids) for ids in selection.layers), default=0)


def _overlaps(meta: BlockMeta, since: float | None, until: float | None) -> bool:
    return (since is None or meta.t_end >= since) and (until is None or meta.t_start <= until)
