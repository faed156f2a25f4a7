"""The PyTorch reference of every kernel: the ``streamvlm.quant`` code itself.

Kept as one module of thin functions with the kernels' signatures, so that a test (or a
reader) puts ``reference.X`` beside ``<name>_triton.X`` and compares. The reference runs
anywhere torch runs and defines the formats; the kernels must reproduce its bytes and its
decoded floats.
"""

from __future__ import annotations

import torch

from ..quant import packing
from ..quant.base import EncodedTensor, KVCodec


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``streamvlm.quant.packing.pack_bits``."""
    return packing.pack_bits(codes, bits)


def unpack_bits(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """``streamvlm.quant.packing.unpack_bits``."""
    return packing.unpack_bits(packed, bits, length)


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """``streamvlm.quant.packing.pack_trits``."""
    return packing.pack_trits(codes)


def unpack_trits(packed: torch.Tensor, length: int) -> torch.Tensor:
    """``streamvlm.quant.packing.unpack_trits``."""
    return packing.unpack_trits(packed, length)


def decode(enc: EncodedTensor, codec: KVCodec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``codec.decode``: the reference of ``kivi_triton.decode`` and ``vidkv_triton.decode_*``."""
    return codec.decode(enc, device, dtype)
