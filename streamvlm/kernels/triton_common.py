"""Device-side helpers shared by the Triton kernels: reading packed codes and log8 scales.

Each mirrors one PyTorch reference in ``streamvlm.quant`` element for element, so the
kernels that call them reproduce the reference bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Passed to every launch: no mul+add -> FMA contraction, so each float operation rounds where
# the reference's (one torch op at a time) does. The decode arithmetic is exact under FMA too
# (see the kernel modules); this removes the need for that argument and does not depend on
# Triton's default, which changes in 3.10. The kernels are memory bound: FMA would not help.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}

# log8 code that decodes to exactly 0 (streamvlm.quant.scales.ZERO_CODE); masked lanes read it
LOG8_ZERO = tl.constexpr(255)


@triton.jit
def load_bits(row_ptr, idx, mask, BITS: tl.constexpr):
    """Code ``idx`` of a row written by ``pack_bits`` (int32; 0 where ``mask`` is False).

    Reference: ``streamvlm.quant.packing.unpack_bits`` (code ``i`` of a byte at bits
    ``[BITS*i, BITS*i + BITS)``).
    """
    byte = tl.load(row_ptr + idx // (8 // BITS), mask=mask, other=0).to(tl.int32)
    return (byte >> ((idx % (8 // BITS)) * BITS)) & ((1 << BITS) - 1)


@triton.jit
def load_trits(row_ptr, idx, mask):
    """Trit ``idx`` (0, 1 or 2) of a row written by ``pack_trits`` (int32).

    Reference: ``streamvlm.quant.packing.unpack_trits``: digit ``idx % 5`` of the byte in
    base 3, i.e. ``byte // 3**(idx % 5) % 3``; the power is taken by repeated division
    because each lane has its own digit position.
    """
    byte = tl.load(row_ptr + idx // 5, mask=mask, other=0).to(tl.int32)
    pos = idx % 5
    for k in tl.static_range(4):
        byte = tl.where(pos > k, byte // 3, byte)
    return byte % 3


@triton.jit
def log8_scale(table_ptr, code_ptr, head_max, mask):
    """float32 scale of the log8 byte at ``code_ptr`` (0 where ``mask`` is False).

    Reference: ``streamvlm.quant.scales.decode_log8``: ``table[code] * head_max`` in float32,
    with the same table, so every device reads the same scale.
    """
    code = tl.load(code_ptr, mask=mask, other=LOG8_ZERO).to(tl.int32)
    return tl.load(table_ptr + code) * head_max


@triton.jit
def log8_minmax(codes_ptr, scale_ptr, zero_ptr, table_ptr, head_max, idx, meta, mask, BITS: tl.constexpr):
    """Decode one ``BITS``-bit code with log8 scale and int8 zero point (0 where not ``mask``).

    Reference: ``streamvlm.quant.uniform.decode_log8_minmax``: ``(q + zero / units) * scale``
    with ``units = zero_units(BITS)`` (4 at <= 2 bits, else 2). The division is written as a
    multiplication by the exact power of two ``1 / units``: Triton lowers float ``/`` to an
    approximate division on NVIDIA GPUs, and ``z * 0.25`` equals ``z / 4`` exactly.
    """
    q = load_bits(codes_ptr, idx, mask, BITS)
    z = tl.load(zero_ptr + meta, mask=mask, other=0).to(tl.float32)
    s = log8_scale(table_ptr, scale_ptr + meta, head_max, mask)
    if BITS <= 2:
        zf = z * 0.25
    else:
        zf = z * 0.5
    return (q.to(tl.float32) + zf) * s


@triton.jit
def to_output(x, out_ptr):
    """float32 ``x`` in ``out_ptr``'s element type, rounded to nearest even like ``Tensor.to``.

    bfloat16 is rounded by hand on the bits: compiled code would round correctly with a
    plain cast, but Triton's interpreter truncates float32 -> bfloat16, and the tests run
    the interpreter. The integer form gives the same bits both ways (finite inputs).
    """
    if out_ptr.dtype.element_ty == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = b + ((b >> 16) & 1) + 0x7FFF
        return (b >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(out_ptr.dtype.element_ty)
