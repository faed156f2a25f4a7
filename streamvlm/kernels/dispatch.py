"""Entry points that run the Triton kernel or the PyTorch reference (``backend.use_triton``).

Both produce the same bytes and the same floats; the choice is only about speed and about
what the machine has. Pass ``backend=`` to override ``$STREAMVLM_KERNELS`` for one call.
"""

from __future__ import annotations

import torch

from ..quant.base import EncodedTensor, KVCodec, QuantError
from ..quant.kivi import KIVICodec
from ..quant.registry import get_kv_codec
from ..quant.vidkv import VidKVCodec
from . import reference
from .backend import launch_device, on_device, use_triton


def pack_bits(codes: torch.Tensor, bits: int, *, backend: str | None = None) -> torch.Tensor:
    """Pack ``bits``-bit codes along the last dimension (layout of ``streamvlm.quant.packing``)."""
    if use_triton(codes.device, backend):
        from . import packing_triton

        with on_device(codes.device):
            return packing_triton.pack_bits(codes, bits)
    return reference.pack_bits(codes, bits)


def unpack_bits(packed: torch.Tensor, bits: int, length: int, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 codes ``[..., length]``."""
    if use_triton(packed.device, backend):
        from . import packing_triton

        with on_device(packed.device):
            return packing_triton.unpack_bits(packed, bits, length)
    return reference.unpack_bits(packed, bits, length)


def pack_trits(codes: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Pack ternary codes {0, 1, 2}, 5 per byte in base 3."""
    if use_triton(codes.device, backend):
        from . import packing_triton

        with on_device(codes.device):
            return packing_triton.pack_trits(codes)
    return reference.pack_trits(codes)


def unpack_trits(packed: torch.Tensor, length: int, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of ``pack_trits``: uint8 codes in {0, 1, 2}, ``[..., length]``."""
    if use_triton(packed.device, backend):
        from . import packing_triton

        with on_device(packed.device):
            return packing_triton.unpack_trits(packed, length)
    return reference.unpack_trits(packed, length)


def has_kernel(codec: KVCodec) -> bool:
    """Whether ``codec``'s blocks have a Triton decode kernel (KIVI at any width, vidkv)."""
    return isinstance(codec, (KIVICodec, VidKVCodec))


def decode(
    enc: EncodedTensor,
    codec: KVCodec | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``codec.decode(enc, device, dtype)``, by a fused Triton kernel where one applies.

    ``codec`` defaults to ``get_kv_codec(enc.codec)`` (default options); pass the codec
    that encoded the block when its options differ, and always for ``vidkv`` keys (the
    layer's channel tiers live in the codec). Codecs without a kernel (fp16, int8,
    vidkv-paper, ...) decode with the reference whatever the backend.
    """
    codec = get_kv_codec(enc.codec) if codec is None else codec
    device = torch.device(device)
    if not has_kernel(codec) or not use_triton(device, backend):
        return reference.decode(enc, codec, device, dtype)
    # the reference's argument checks, so both paths fail alike
    codec.check_decodes(enc)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise QuantError(f"decode dtype must be a floating torch.dtype, got {dtype!r}")
    device = launch_device(device)
    with on_device(device):
        if isinstance(codec, KIVICodec):
            from . import kivi_triton

            return kivi_triton.decode(enc, codec, device, dtype)
        from . import vidkv_triton

        if enc.kind == "key":
            return vidkv_triton.decode_keys(enc, codec, device, dtype)
        return vidkv_triton.decode_values(enc, codec, device, dtype)
