"""Triton pack/unpack of n-bit codes and base-3 trits, byte for byte the layout of
``streamvlm.quant.packing`` (its functions are the reference; the tests compare the two).

Every launcher works on ``[..., n]`` tensors as rows of the last dimension: one program per
(row, block of bytes or codes), so rows of any length and count fill the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.base import QuantError
from ..quant.packing import BIT_WIDTHS, packed_length, validate_codes
from .backend import check_runnable
from .triton_common import LAUNCH_OPTIONS, load_bits, load_trits

PACK_BLOCK = 512  # bytes written per program
UNPACK_BLOCK = 1024  # codes written per program


@triton.jit
def _pack_bits_kernel(codes_ptr, out_ptr, n, n_bytes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = b < n_bytes
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for j in tl.static_range(8 // BITS):
        i = b * (8 // BITS) + j
        # codes past the end read as 0: the zero padding of the reference
        c = tl.load(codes_ptr + row * n + i, mask=live & (i < n), other=0).to(tl.int32)
        acc = acc | (c << (j * BITS))
    tl.store(out_ptr + row * n_bytes + b, acc.to(tl.uint8), mask=live)


@triton.jit
def _pack_trits_kernel(codes_ptr, out_ptr, n, n_bytes, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = b < n_bytes
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    # Horner from the last digit: ((c4 * 3 + c3) * 3 + ...) + c0 = c0 + 3 c1 + ... + 81 c4
    for k in tl.static_range(5):
        i = b * 5 + (4 - k)
        c = tl.load(codes_ptr + row * n + i, mask=live & (i < n), other=0).to(tl.int32)
        acc = acc * 3 + c
    tl.store(out_ptr + row * n_bytes + b, acc.to(tl.uint8), mask=live)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, length, n_bytes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    # BITS == 0 means base-3 trits
    row = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = i < length
    if BITS == 0:
        code = load_trits(packed_ptr + row * n_bytes, i, live)
    else:
        code = load_bits(packed_ptr + row * n_bytes, i, live, BITS)
    tl.store(out_ptr + row * length + i, code.to(tl.uint8), mask=live)


def _check_codes(codes: torch.Tensor, limit: int, what: str) -> torch.Tensor:
    # the reference's rules and messages; no int32 copy (the kernel reads any int width)
    validate_codes(codes, limit, what)
    # bool has no Triton pointer type worth trusting; its bytes are 0/1 uint8
    return codes.view(torch.uint8) if codes.dtype == torch.bool else codes


def _check_packed(packed: torch.Tensor, length: int, bits: int | None, what: str) -> None:
    if packed.dtype != torch.uint8:
        raise QuantError(f"packed {what} must be uint8, got {packed.dtype}")
    if packed.dim() == 0 or packed.shape[-1] != packed_length(length, bits):
        got = packed.shape[-1] if packed.dim() else 0
        raise QuantError(
            f"{got} packed bytes cannot hold exactly {length} {what}; expected {packed_length(length, bits)}"
        )


def _check_bits(bits: int) -> int:
    if bits not in BIT_WIDTHS:
        raise QuantError(f"cannot pack {bits}-bit codes; use one of {BIT_WIDTHS}")
    return bits


def _pack(codes: torch.Tensor, bits: int | None) -> torch.Tensor:
    n = codes.shape[-1]
    n_bytes = packed_length(n, bits)
    out = torch.empty(*codes.shape[:-1], n_bytes, dtype=torch.uint8, device=codes.device)
    if out.numel() == 0:
        return out
    rows = codes.contiguous().view(-1, n)
    grid = (rows.shape[0], triton.cdiv(n_bytes, PACK_BLOCK))
    kernel = _pack_trits_kernel if bits is None else _pack_bits_kernel
    check_runnable(kernel, codes.device)
    if bits is None:
        _pack_trits_kernel[grid](rows, out, n, n_bytes, BLOCK=PACK_BLOCK, **LAUNCH_OPTIONS)
    else:
        _pack_bits_kernel[grid](rows, out, n, n_bytes, BITS=bits, BLOCK=PACK_BLOCK, **LAUNCH_OPTIONS)
    return out


def _unpack(packed: torch.Tensor, bits: int | None, length: int) -> torch.Tensor:
    out = torch.empty(*packed.shape[:-1], length, dtype=torch.uint8, device=packed.device)
    if out.numel() == 0:
        return out
    rows = packed.contiguous().view(-1, packed.shape[-1])
    check_runnable(_unpack_kernel, packed.device)
    grid = (rows.shape[0], triton.cdiv(length, UNPACK_BLOCK))
    _unpack_kernel[grid](
        rows, out, length, rows.shape[1], BITS=bits or 0, BLOCK=UNPACK_BLOCK, **LAUNCH_OPTIONS
    )
    return out


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Triton ``streamvlm.quant.packing.pack_bits``: same bytes, on ``codes.device``."""
    _check_bits(bits)
    return _pack(_check_codes(codes, 1 << bits, f"{bits}-bit"), bits)


def unpack_bits(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Triton ``streamvlm.quant.packing.unpack_bits``: uint8 codes ``[..., length]``."""
    _check_bits(bits)
    _check_packed(packed, length, bits, f"{bits}-bit codes")
    return _unpack(packed, bits, length)


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """Triton ``streamvlm.quant.packing.pack_trits``: 5 trits per byte, base 3."""
    return _pack(_check_codes(codes, 3, "ternary"), None)


def unpack_trits(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Triton ``streamvlm.quant.packing.unpack_trits``: uint8 codes in {0, 1, 2}."""
    _check_packed(packed, length, None, "trits")
    return _unpack(packed, None, length)
