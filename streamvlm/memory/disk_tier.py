"""The long-term tier: blocks encoded by a codec, in a session directory's ``DiskLog``.

Two classes, two jobs. ``disk.DiskLog`` is the storage engine: it keeps ``StoredBlock``s
(named tensors, codec-agnostic) crash-safe in segment files and is tested on its own with
arbitrary tensors. ``DiskTier`` is the ``Tier``: it turns blocks into stored blocks with
its codec, counts their bits, and keeps the stateful-codec contract. Keeping the engine
free of codecs keeps its file format and recovery independent of how KV is encoded.

The tier is ``persistent``: its owner writes every block through to it when the block is
created and adopts what it holds when a session resumes. A stateful codec's per-layer
state (``vidkv``) is handed to ``on_codec_state`` whenever it changes, before the first
block that needs it reaches the disk, so whatever survives a crash can be decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from functools import partial

import torch

from . import segments as rec
from .block import Block, BlockMeta, StoredBlock
from .codec import BlockCodec
from .disk import DiskLog
from .tiers import StagedPut, Tier


class DiskTier(Tier):
    """Blocks encoded by ``codec`` in ``log``; ``log.max_bytes`` is the budget.

    ``on_codec_state(codec)`` is called whenever the codec's per-layer state changed,
    before a block encoded with the new state is written, and at ``sync``/``flush``/``close``
    if it changed since. Recovery, verification and corruption reports are the log's
    (``tier.log.recovery``, ``tier.log.verify()``).
    """

    persistent = True

    def __init__(
        self,
        log: DiskLog,
        codec: BlockCodec,
        *,
        on_codec_state: Callable[[BlockCodec], None] | None = None,
        name: str = "disk",
    ):
        self.name = name
        self.log = log
        self.codec = codec
        self.on_codec_state = on_codec_state
        self._state_version = codec.state_version  # the last version handed over
        # (kv_bits, kv_elements) per block, counted when put or first read (a reopened log
        # may hold many blocks: they are read once, when the store adopts them)
        self._kv: dict[int, tuple[int, int]] = {}
        self._kv_bits = self._kv_elements = 0

    @property
    def capacity(self) -> int | None:
        return self.log.max_bytes

    # ----- writing ---------------------------------------------------------------

    def stage(self, block: Block, record: StoredBlock | None = None) -> StagedPut:
        stored = self.codec.encode(block) if record is None else record
        prepared = self.log.prepare(stored)  # refuses a block bigger than the whole budget
        return StagedPut(block.id, prepared.header.record_len, partial(self._write, stored, prepared))

    def _write(self, stored: StoredBlock, record: rec.EncodedRecord) -> None:
        self._hand_codec_state()  # before the block that may need it is on disk
        self.log.append(record)
        self._count(stored)

    def pop(self, block_id: int) -> None:
        self.log.drop(block_id)
        bits, elements = self._kv.pop(block_id, (0, 0))
        self._kv_bits -= bits
        self._kv_elements -= elements

    def _count(self, stored: StoredBlock) -> None:
        if stored.id not in self._kv:
            self._kv[stored.id] = (stored.kv_bits, stored.kv_elements)
            self._kv_bits += stored.kv_bits
            self._kv_elements += stored.kv_elements

    def _hand_codec_state(self) -> None:
        version = self.codec.state_version
        if version != self._state_version and self.on_codec_state is not None:
            self.on_codec_state(self.codec)
            self._state_version = version

    # ----- reading ---------------------------------------------------------------

    def record(self, block_id: int) -> StoredBlock:
        return self.log.get(block_id)

    def get(self, block_id: int, device: torch.device, dtype: torch.dtype) -> Block:
        return self.codec.decode(self.log.get(block_id), device, dtype)

    def meta(self, block_id: int) -> BlockMeta:
        stored = self.log.get(block_id)
        self._count(stored)
        return self.codec.decode_meta(stored)

    def entries(self) -> Iterator[tuple[int, int]]:
        return self.log.entries()

    @property
    def held(self) -> Collection[int]:
        return self.log  # the log answers ``in`` and ``len`` from its block table

    @property
    def nbytes(self) -> int:
        return self.log.nbytes

    @property
    def kv_bits(self) -> int:
        self._count_all()
        return self._kv_bits

    @property
    def kv_elements(self) -> int:
        self._count_all()
        return self._kv_elements

    def _count_all(self) -> None:
        if len(self._kv) < len(self.log):  # blocks of a reopened log not read yet
            for block_id in self.log.ids():
                if block_id not in self._kv:
                    self._count(self.log.get(block_id))

    def codec_state_bytes(self) -> int:
        return self.codec.shared_bytes()

    # ----- durability ------------------------------------------------------------

    def sync(self) -> None:
        self._hand_codec_state()
        self.log.sync()

    def flush(self) -> None:
        self._hand_codec_state()
        self.log.flush()

    def close(self) -> None:
        self._hand_codec_state()
        self.log.close()
