"""Numba helpers shared by the CPU kernels (``kivi_cpu.py``, ``vidkv_cpu.py``): bit fields,
trits, float16/bfloat16 rounding, log8 codes, threads. Imported only when a CPU kernel runs.

Exactness rules every kernel follows (they are the reference's, ``streamvlm.quant``):

* float32 arithmetic, one IEEE operation at a time, in the reference's order: numba does not
  contract ``a * b + c`` into an FMA without ``fastmath`` (never set here), and every
  constant is a float32, so nothing is promoted to float64 by accident;
* sums over a group run element by element in float64, rounded once (``groups.group_sum``);
* rounding is to nearest even (``np.rint`` is ``torch.round``), conversions to float16 and
  bfloat16 too (``Tensor.to``);
* log8 codes come from the reference's float64 boundaries (``scales.code_bounds``) and
  decode through its float32 table.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
import torch
from numba import njit

from ..quant import scales

JIT = {"cache": True, "nogil": True}  # compiled once per machine; releases the GIL while it runs
PARALLEL_JIT = JIT | {"parallel": True}

# output dtypes the kernels write themselves (others: float32 then ``Tensor.to``)
OUT_F32, OUT_F16, OUT_BF16 = 0, 1, 2
_OUT_MODES = {torch.float32: OUT_F32, torch.float16: OUT_F16, torch.bfloat16: OUT_BF16}


def out_mode(dtype: torch.dtype) -> int | None:
    """The kernels' code for writing ``dtype`` directly, None if they cannot."""
    return _OUT_MODES.get(dtype)


def as_numpy_out(out: torch.Tensor) -> np.ndarray:
    """A numpy view of ``out`` (any strides) the kernels write into: float32 as is, the 16-bit
    floats as their uint16 bit patterns (numba has no float16 or bfloat16 on CPU)."""
    return (out if out.dtype == torch.float32 else out.view(torch.int16)).numpy()


def u16(t: torch.Tensor) -> np.ndarray:
    """The bit patterns of a float16 / bfloat16 tensor, as numpy uint16 (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


@functools.lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log8 table float32 [256], float16 bits -> float32 [65536], nearest and round-up code
    bounds float64 [254]), all from the reference's own definitions."""
    log8 = scales.decode_log8(torch.arange(256, dtype=torch.uint8), torch.ones(1, dtype=torch.bfloat16))
    f16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    return (
        log8.numpy().copy(),
        f16.numpy().copy(),
        scales.code_bounds(False).numpy().copy(),
        scales.code_bounds(True).numpy().copy(),
    )


_THREADS_LOCK = threading.Lock()


def match_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch's pool, never more: the two
    pools take turns (a kernel, then a torch op), so together they never oversubscribe."""
    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        with _THREADS_LOCK:
            numba.set_num_threads(wanted)


# ----- scalars ---------------------------------------------------------------------------


@njit(**JIT)
def f32_bits(x):
    return np.array([x], dtype=np.float32).view(np.uint32)[0]


@njit(**JIT)
def f32_from_bits(u):
    return np.array([u], dtype=np.uint32).view(np.float32)[0]


@njit(**JIT)
def to_f16_bits(x):
    """float32 -> float16 bit pattern, round to nearest even (finite inputs, overflow -> inf)."""
    u = np.uint32(f32_bits(np.float32(x)))
    sign = np.uint32((u >> np.uint32(16)) & np.uint32(0x8000))
    a = u & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):  # inf / nan
        return np.uint16(sign | np.uint32(0x7C00) | (np.uint32(0x200) if a > np.uint32(0x7F800000) else 0))
    if a >= np.uint32(0x477FF000):  # rounds to beyond 65504
        return np.uint16(sign | np.uint32(0x7C00))
    if a < np.uint32(0x38800000):  # below 2**-14: float16 subnormal (or zero)
        e = np.int64(a >> np.uint32(23))
        if e < 102:
            return np.uint16(sign)
        mant = np.int64((a & np.uint32(0x7FFFFF)) | np.uint32(0x800000))
        shift = 126 - e
        r = mant >> shift
        rem = mant & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        if rem > half or (rem == half and (r & 1) == 1):
            r += 1
        return np.uint16(sign | np.uint32(r))
    rounded = a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))
    return np.uint16(sign | ((rounded - np.uint32(0x38000000)) >> np.uint32(13)))


@njit(**JIT)
def to_bf16_bits(x):
    """float32 -> bfloat16 bit pattern, round to nearest even (finite inputs)."""
    u = np.uint32(f32_bits(np.float32(x)))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(**JIT)
def bf16_value(b):
    """bfloat16 bit pattern -> float32 (exact)."""
    return f32_from_bits(np.uint32(b) << np.uint32(16))


@njit(**JIT)
def bf16_round_up_bits(v):
    """``scales.bf16_round_up``: the smallest bfloat16 >= ``v`` (v >= 0), as bits."""
    b = to_bf16_bits(v)
    if bf16_value(b) < np.float32(v):
        b = np.uint16(b + 1)
    return b


@njit(**JIT)
def store(out, h, t, d, x, mode):
    """``out[h, t, d] = x`` converted like ``Tensor.to(out dtype)``."""
    if mode == OUT_F32:
        out[h, t, d] = x
    elif mode == OUT_F16:
        out[h, t, d] = np.int16(to_f16_bits(x))
    else:
        out[h, t, d] = np.int16(to_bf16_bits(x))


@njit(**JIT)
def log8_code(s, hm, bounds):
    """``scales.encode_log8`` for one scale ``s`` (float32) under head max ``hm`` (float32)."""
    if not s > np.float32(0.0):
        return np.uint8(255)
    ratio = s / (hm if hm > np.float32(0.0) else np.float32(1.0))
    return np.uint8(bounds.shape[0] - np.searchsorted(bounds, np.float64(ratio)))


@njit(**JIT)
def read_bits(row, i, bits):
    """Code ``i`` of a ``pack_bits`` row (LSB first inside a byte)."""
    pos = i * bits
    return (np.int64(row[pos >> 3]) >> (pos & 7)) & ((1 << bits) - 1)


@njit(**JIT)
def write_bits(row, i, bits, code):
    """OR code ``i`` into a zeroed ``pack_bits`` row."""
    pos = i * bits
    row[pos >> 3] |= np.uint8(code << (pos & 7))


@njit(**JIT)
def balanced_bounds(g, group, length):
    """Elements ``[start, stop)`` of group ``g`` of ``length`` in groups of ``group``."""
    start = g * group
    return start, min(length, start + group)
