"""Entry points that run a Triton kernel, a numba CPU kernel or the PyTorch reference
(``backend.choose``).

All produce the same bytes and the same floats; the choice is only about speed and about
what the machine has. Pass ``backend=`` to override ``$STREAMVLM_KERNELS`` for one call.
The CPU kernels handle both of vidkv's layouts, the Triton kernels its standard one
(``standard_layout``); anything else runs the reference.
"""

from __future__ import annotations

import torch

from ..quant.base import EncodedTensor, KVCodec, QuantError
from ..quant.kivi import KIVICodec
from ..quant.registry import get_kv_codec
from ..quant.vidkv import VidKVCodec
from ..quant.vidkv_compact import is_compact
from . import reference
from .backend import CPU, REFERENCE, TRITON, choose, launch_device, on_device, requested_backend, use_triton


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
    """Whether ``codec``'s blocks have Triton and CPU kernels (KIVI at any width, vidkv)."""
    return isinstance(codec, (KIVICodec, VidKVCodec))


def standard_layout(codec: KVCodec, tokens: int) -> bool:
    """Whether a block of ``tokens`` tokens is in the layout the Triton kernels read.

    vidkv stores blocks of fewer tokens than ``group_size`` in a compact layout of their
    own, which the CPU kernels and the reference code, Triton not; KIVI has one layout.
    """
    return not isinstance(codec, VidKVCodec) or tokens >= codec.group_size


def path_for(codec: KVCodec, tokens: int, device: torch.device | str, backend: str | None = None) -> str:
    """What codes ``codec``'s block of ``tokens`` tokens whose result lives on ``device``:
    ``"triton"``, ``"cpu"`` or ``"reference"`` (the one place that decides, for encode and decode)."""
    if not has_kernel(codec):
        requested_backend(backend)  # an unknown name is an error even where only the reference applies
        return REFERENCE
    path = choose(device, backend)
    return REFERENCE if path == TRITON and not standard_layout(codec, tokens) else path


def encode(
    codec: KVCodec, x: torch.Tensor, kind: str, layer: int = 0, *, backend: str | None = None
) -> EncodedTensor:
    """``codec.encode(x, kind, layer)``, by the numba CPU kernels where they apply (CPU
    tensors, kivi/vidkv, standard layout); the same bytes either way. There is no Triton
    encoder: CUDA tensors encode with the reference (in torch, on the GPU)."""
    if path_for(codec, int(x.shape[1]) if x.dim() == 3 else 0, x.device, backend) != CPU:
        return codec.encode(x, kind, layer)
    codec.check_input(x, kind, layer)  # the reference's checks and messages
    x = x.detach()
    if isinstance(codec, KIVICodec):
        from . import kivi_cpu

        codec.check_values([x])
        tensors = kivi_cpu.encode(x, codec, kind)
    else:
        # checks its values itself, from what its kernels read anyway (one pass less)
        kernel = _vidkv_kernels(compact=not standard_layout(codec, int(x.shape[1])))
        tensors = (kernel.encode_keys if kind == "key" else kernel.encode_values)(x, codec, layer)
    return EncodedTensor(codec.name, kind, tuple(int(s) for s in x.shape), tensors, layer)


def _check_out(out: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
        raise QuantError(f"decode out= must be a floating torch.Tensor, got {getattr(out, 'dtype', out)!r}")
    if tuple(out.shape) != tuple(shape):
        raise QuantError(
            f"decode out= has shape {tuple(out.shape)}, the block {tuple(shape)}; "
            "pass a [heads, tokens, head_dim] view of exactly the block's tokens"
        )


def decode(
    enc: EncodedTensor,
    codec: KVCodec | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    backend: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``codec.decode(enc, device, dtype)``, by a fused kernel where one applies.

    ``codec`` defaults to ``get_kv_codec(enc.codec)`` (default options); pass the codec
    that encoded the block when its options differ, and always for ``vidkv`` keys (the
    layer's channel tiers live in the codec). Codecs without a kernel (fp16, int8,
    vidkv-paper, ...) decode with the reference whatever the backend.

    ``out``: a preallocated ``[heads, tokens, head_dim]`` tensor (any strides, e.g. a slice
    of a larger cache) to decode into; ``device`` and ``dtype`` are then its own. The CPU
    kernels write straight into it; the other paths decode, then copy into it. Returns the
    decoded tensor (``out`` itself when given).
    """
    codec = get_kv_codec(enc.codec) if codec is None else codec
    if out is not None:
        _check_out(out, enc.shape)
        device, dtype = out.device, out.dtype
    if not isinstance(device, torch.device):
        device = torch.device(device)
    path = path_for(codec, enc.shape[1], device, backend)
    if path == REFERENCE:
        result = reference.decode(enc, codec, device, dtype)
        return result if out is None else out.copy_(result)
    # the reference's argument checks, so every path fails alike
    codec.check_decodes(enc)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise QuantError(f"decode dtype must be a floating torch.dtype, got {dtype!r}")
    if path == CPU:
        return _decode_cpu(enc, codec, dtype, out)
    assert path == TRITON
    result = _decode_triton(enc, codec, device, dtype)
    return result if out is None else out.copy_(result)


def _decode_cpu(
    enc: EncodedTensor, codec: KVCodec, dtype: torch.dtype, out: torch.Tensor | None
) -> torch.Tensor:
    from . import cpu_common

    mode = cpu_common.out_mode(dtype)
    # the kernels write float32, float16 and bfloat16 themselves; other dtypes via float32
    target = (
        out
        if out is not None and mode is not None
        else torch.empty(enc.shape, dtype=dtype if mode is not None else torch.float32)
    )
    mode = cpu_common.OUT_F32 if mode is None else mode
    if isinstance(codec, KIVICodec):
        from . import kivi_cpu

        kivi_cpu.decode_into(enc, codec, target, mode)
    else:
        # the layout is read from the tensor names, as the reference does: blocks written
        # before the compact layout existed are standard at any token count
        kernel = _vidkv_kernels(compact=is_compact(enc.tensors))
        (kernel.decode_keys_into if enc.kind == "key" else kernel.decode_values_into)(
            enc, codec, target, mode
        )
    if out is not None:
        return out if target is out else out.copy_(target)
    return target if target.dtype == dtype else target.to(dtype)


def _vidkv_kernels(compact: bool):
    """The module of vidkv's CPU kernels for the compact or the standard layout."""
    if compact:
        from . import vidkv_compact_cpu

        return vidkv_compact_cpu
    from . import vidkv_cpu

    return vidkv_cpu


def _decode_triton(
    enc: EncodedTensor, codec: KVCodec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    device = launch_device(device)
    with on_device(device):
        if isinstance(codec, KIVICodec):
            from . import kivi_triton

            return kivi_triton.decode(enc, codec, device, dtype)
        from . import vidkv_triton

        if enc.kind == "key":
            return vidkv_triton.decode_keys(enc, codec, device, dtype)
        return vidkv_triton.decode_values(enc, codec, device, dtype)
