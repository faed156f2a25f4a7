"""Codecs turn a block's KV into what a tier stores, and back.

A tier holds ``StoredBlock``s: JSON metadata plus named CPU tensors. The identity codec
keeps the tensors as they are; quantized codecs (a later issue) plug in here without
changing tier code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields

import torch

from .block import Block, BlockMeta, StoredBlock

_TENSOR_FIELDS = ("positions", "kept", "summary")


def meta_to_json(meta: BlockMeta) -> dict:
    # not dataclasses.asdict: it deep-copies the tensor fields only to drop them
    return {f.name: getattr(meta, f.name) for f in fields(meta) if f.name not in _TENSOR_FIELDS}


class Codec(ABC):
    """Encodes a block's per-layer KV into named tensors, and decodes them."""

    name: str

    @abstractmethod
    def encode_layers(self, block: Block) -> dict[str, torch.Tensor]:
        """Named CPU tensors holding the block's KV."""

    @abstractmethod
    def decode_layers(self, tensors: dict[str, torch.Tensor], num_layers: int, device, dtype):
        """The per-layer ``(keys, values)`` back on ``device`` in ``dtype``."""

    def encode(self, block: Block) -> StoredBlock:
        tensors = {
            name: getattr(block.meta, name).cpu()
            for name in _TENSOR_FIELDS
            if getattr(block.meta, name) is not None
        }
        tensors.update(self.encode_layers(block))
        meta = meta_to_json(block.meta) | {"codec": self.name, "layers": len(block.layers)}
        return StoredBlock(meta=meta, tensors=tensors)

    def decode(self, stored: StoredBlock, device, dtype) -> Block:
        layers = self.decode_layers(stored.tensors, stored.meta["layers"], device, dtype)
        return Block(meta=self.decode_meta(stored), layers=tuple(layers))

    @staticmethod
    def decode_meta(stored: StoredBlock) -> BlockMeta:
        """The block's metadata alone (no KV is decoded)."""
        tensors = {name: stored.tensors[name].clone() for name in _TENSOR_FIELDS if name in stored.tensors}
        return BlockMeta(
            **tensors, **{k: stored.meta[k] for k in ("id", "t_start", "t_end", "frames", "codec")}
        )


class IdentityCodec(Codec):
    """Stores keys and values exactly as computed (lossless)."""

    name = "identity"

    def encode_layers(self, block: Block) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, (k, v) in enumerate(block.layers):
            tensors[f"k.{i}"] = k.detach().to("cpu").contiguous()
            tensors[f"v.{i}"] = v.detach().to("cpu").contiguous()
        return tensors

    def decode_layers(self, tensors, num_layers, device, dtype):
        return [
            (
                tensors[f"k.{i}"].to(device=device, dtype=dtype, non_blocking=True),
                tensors[f"v.{i}"].to(device=device, dtype=dtype, non_blocking=True),
            )
            for i in range(num_layers)
        ]


CODECS: dict[str, type[Codec]] = {"identity": IdentityCodec}


def get_codec(name: str) -> Codec:
    from ..errors import ConfigError

    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name]()
