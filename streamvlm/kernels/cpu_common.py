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
import math
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
def trit_table() -> np.ndarray:
    """uint8 ``[256, 5]``: the base-3 digits of every byte (``packing.pack_trits`` layout)."""
    b = np.arange(256)
    return np.stack([(b // 3**k) % 3 for k in range(5)], axis=1).astype(np.uint8)


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
def f16_bits(x):
    """float32 -> float16 bit pattern, round to nearest even (finite inputs; overflow -> inf),
    by exact float64 scaling and ``rint`` (no bit casts: nothing to allocate per call)."""
    a = abs(np.float64(x))
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    if a >= 65520.0:
        return np.uint16(sign | 0x7C00)
    if a < 6.103515625e-05:  # below 2**-14: subnormal, in units of 2**-24
        return np.uint16(sign | int(np.rint(a * 16777216.0)))
    _, e = math.frexp(a)  # a = mant * 2**e, mant in [0.5, 1): the float16 exponent is e - 1
    m = int(np.rint(math.ldexp(a, 11 - e)))  # 1024 .. 2048; 2048 carries into the exponent
    return np.uint16(sign | (((e - 1 + 15) << 10) + m - 1024))


@njit(**JIT)
def bf16_value(b):
    """Non-negative bfloat16 bit pattern -> float32 (exact)."""
    exp = (np.int64(b) >> 7) & 0xFF
    mant = np.int64(b) & 0x7F
    if exp == 0:
        return np.float32(math.ldexp(mant, -133))
    return np.float32(math.ldexp(128 + mant, exp - 134))


@njit(**JIT)
def bf16_round_up_bits(v):
    """``scales.bf16_round_up``: the smallest bfloat16 >= ``v`` (finite, >= 0), as bits."""
    a = np.float64(v)
    if a < 1.1754943508222875e-38:  # below 2**-126: bfloat16 subnormal, units of 2**-133
        return np.uint16(int(math.ceil(math.ldexp(a, 133))))
    _, e = math.frexp(a)  # the bfloat16 exponent is e - 1; 8 significant bits
    m = int(math.ceil(math.ldexp(a, 8 - e)))  # 128 .. 256; 256 carries into the exponent
    return np.uint16(((e - 1 + 127) << 7) + m - 128)


@njit(**JIT)
def log8_code(s, hm, bounds):
    """``scales.encode_log8`` for one scale ``s`` under head max ``hm`` (float32): the number
    of ``bounds`` (float64, ascending) >= the ratio, found from an estimate of -16 log2 and
    settled by exact comparisons."""
    if not s > np.float32(0.0):
        return np.uint8(255)
    r = np.float64(s / (hm if hm > np.float32(0.0) else np.float32(1.0)))
    n = bounds.shape[0]
    mant, e = math.frexp(r)  # r = mant * 2**e, mant in [0.5, 1); log2(2 mant) ~ 2 mant - 1
    j = min(max(int(math.floor(-16.0 * (e - 1) - 16.0 * (2.0 * mant - 1.0))), 0), n)
    while j < n and bounds[n - j - 1] >= r:
        j += 1
    while j > 0 and bounds[n - j] < r:
        j -= 1
    return np.uint8(j)


# ----- rows: unpack, pack, convert (loops LLVM vectorizes) -------------------------------


@njit(**JIT)
def unpack_bits_row(row, first, n, bits, out):
    """Codes ``first .. first + n`` of a ``pack_bits`` row into ``out[:n]`` (uint8)."""
    mask = (1 << bits) - 1
    for i in range(n):
        pos = (first + i) * bits
        out[i] = (row[pos >> 3] >> (pos & 7)) & mask


@njit(**JIT)
def pack_bits_row(codes, n, bits, row):
    """``pack_bits`` of ``codes[:n]`` (each < 2**bits) into ``row`` (zero padded)."""
    per = 8 // bits
    for j in range(row.shape[0]):
        acc = 0
        for k in range(per):
            i = j * per + k
            if i < n:
                acc |= np.int64(codes[i]) << (k * bits)
        row[j] = acc


@njit(**JIT)
def unpack_trits_row(row, n, trit_table, out):
    """Trits ``0 .. n`` of a ``pack_trits`` row into ``out[:n]``; ``trit_table[b, k]`` is digit k of b."""
    for j in range(row.shape[0]):
        b = row[j]
        for k in range(5):
            i = j * 5 + k
            if i < n:
                out[i] = trit_table[b, k]


@njit(**JIT)
def pack_trits_row(codes, n, row):
    """``pack_trits`` of ``codes[:n]`` (each in 0..2) into ``row`` (zero padded)."""
    for j in range(row.shape[0]):
        acc = 0
        w = 1
        for k in range(5):
            i = j * 5 + k
            if i < n:
                acc += np.int64(codes[i]) * w
            w *= 3
        row[j] = acc


@njit(**JIT)
def _f16_row(vals, vals_u, dest):
    # branch-free round to nearest even: normal numbers by integer rounding of the bits,
    # subnormals (|x| < 2**-14) as rint(|x| * 2**24) (an exact scaling), overflow to inf
    for d in range(vals.shape[0]):
        u = np.int64(vals_u[d])
        a = u & 0x7FFFFFFF
        normal = ((a + 0xFFF + ((a >> 13) & 1)) - 0x38000000) >> 13
        sub = np.int64(np.rint(abs(vals[d]) * np.float32(16777216.0)))
        r = sub if a < 0x38800000 else normal
        r = 0x7C00 if a >= 0x477FF000 else r
        dest[d] = ((u >> 16) & 0x8000) | r


@njit(**JIT)
def emit_row(vals, vals_u, out, h, t, mode):
    """``out[h, t, :] = vals`` converted like ``Tensor.to(out dtype)`` (``vals_u``: ``vals``'s bits)."""
    dest = out[h, t]
    if mode == OUT_F32:
        dest[:] = vals
    elif mode == OUT_F16:
        _f16_row(vals, vals_u, dest)
    else:
        for d in range(vals.shape[0]):
            u = np.int64(vals_u[d])
            dest[d] = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
