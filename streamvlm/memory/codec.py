"""Block codecs turn a block's KV into what a tier stores, and back.

A tier holds ``StoredBlock``s: JSON metadata plus named CPU tensors. The identity codec
keeps the tensors as they are; the quantized block codecs (``quantized.py``, one per KV
codec of ``streamvlm.quant``) store each layer's keys and values encoded. Tiers never look
inside: they store, move and count what a block codec gives them. Block codecs are found
by name in ``BLOCK_CODECS`` (``MemoryConfig.host_codec`` / ``disk_codec``); KV codecs,
which encode one tensor, in ``KV_CODECS``.

Besides the block's own fields, ``StoredBlock.meta`` holds ``codec`` (this codec's name),
``layers`` and ``kv_shape`` (``[kv_heads, tokens, head_dim]`` of every layer), which is
what a decoder needs to rebuild tensors that were stored packed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .. import transfer
from ..errors import ConfigError
from ..registry import BLOCK_CODECS, Registered
from .block import META_TENSORS, Block, BlockMeta, StoredBlock

# BlockMeta fields a stored block's JSON meta holds beside its tensors (``spilled`` is only
# for a record in RAM whose tensors are on disk: a stored block has them)
_STORED_FIELDS = ("id", "t_start", "t_end", "frames", "codec")


def meta_to_json(meta: BlockMeta) -> dict:
    return {name: getattr(meta, name) for name in _STORED_FIELDS}


def kv_shape(block: Block) -> list[int]:
    """``[kv_heads, tokens, head_dim]`` shared by every layer of ``block``."""
    shapes = {tuple(k.shape) for k, _ in block.layers}
    if len(shapes) > 1:
        raise ValueError(f"block {block.id}: layers differ in KV shape {sorted(shapes)}; codecs need one")
    return list(shapes.pop()) if shapes else [0, block.meta.tokens, 0]


class BlockCodec(Registered, ABC):
    """Encodes a block's per-layer KV into named tensors, and decodes them.

    Subclasses register by name: ``class MyCodec(BlockCodec, name="mine")`` makes
    ``host_codec="mine"`` valid; a class that serves several names (``QuantizedCodec``)
    omits ``name`` and adds a factory per name to ``BLOCK_CODECS`` itself.

    A codec may keep state once per layer rather than per block (``vidkv``'s frozen key
    channel tiers): ``shared_state`` returns it as named CPU tensors to persist next to the
    blocks, ``load_shared_state`` restores it, and ``state_version`` changes whenever new
    state appears, so that a store knows when to persist it again. ``stateful`` says
    whether a codec's blocks need such state to be decoded at all.
    """

    registry = BLOCK_CODECS
    stateful: bool = False
    state_version: int = 0

    @abstractmethod
    def encode_layers(self, block: Block) -> dict[str, torch.Tensor]:
        """Named tensors holding the block's KV, on the block's device or the CPU: ``encode``
        moves them to the host in one piece."""

    @abstractmethod
    def decode_layers(self, tensors: dict[str, torch.Tensor], meta: dict, device, dtype):
        """The per-layer ``(keys, values)`` back on ``device`` in ``dtype``; ``meta`` is the
        stored block's JSON metadata (``layers``, ``kv_shape``)."""

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Per-layer state as named CPU tensors (empty for stateless codecs)."""
        return {}

    def load_shared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``shared_state`` returned, before decoding blocks encoded with it."""
        if tensors:
            raise ConfigError(f"codec {self.name!r} keeps no per-layer state; there is none to load")

    def shared_bytes(self) -> int:
        """Bytes of the per-layer state (stored once per stream, not in any block)."""
        return sum(t.nbytes for t in self.shared_state().values())

    def encode(self, block: Block) -> StoredBlock:
        """The block as stored: its fields and encoded KV as CPU tensors sharing one buffer
        (page-locked when CUDA is present), moved from the device in one copy."""
        tensors = {
            name: getattr(block.meta, name) for name in META_TENSORS if getattr(block.meta, name) is not None
        }
        tensors.update(self.encode_layers(block))
        meta = meta_to_json(block.meta) | {
            "codec": self.name,
            "layers": len(block.layers),
            "kv_shape": kv_shape(block),
        }
        return StoredBlock(meta=meta, tensors=transfer.to_host(tensors))

    def decode(self, stored: StoredBlock, device, dtype) -> Block:
        layers = self.decode_layers(stored.tensors, stored.meta, device, dtype)
        return Block(meta=self.decode_meta(stored), layers=tuple(layers))

    @staticmethod
    def decode_meta(stored: StoredBlock) -> BlockMeta:
        """The block's metadata alone (no KV is decoded)."""
        tensors = {name: stored.tensors[name].clone() for name in META_TENSORS if name in stored.tensors}
        return BlockMeta(**tensors, **{k: stored.meta[k] for k in _STORED_FIELDS})


class IdentityCodec(BlockCodec, name="identity"):
    """Stores keys and values exactly as computed (lossless)."""

    def encode_layers(self, block: Block) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, (k, v) in enumerate(block.layers):
            tensors[f"k.{i}"] = k.detach()
            tensors[f"v.{i}"] = v.detach()
        return tensors

    def decode_layers(self, tensors, meta, device, dtype):
        tensors = transfer.to_device(tensors, device)
        return [(tensors[f"k.{i}"].to(dtype), tensors[f"v.{i}"].to(dtype)) for i in range(meta["layers"])]


def get_block_codec(name: str) -> BlockCodec:
    """A new block codec: ``identity`` or any KV codec of ``streamvlm.quant`` with default
    options (old names such as ``vidkv-ref`` accepted); ``ConfigError`` names the choices."""
    return BLOCK_CODECS.get(name)()
