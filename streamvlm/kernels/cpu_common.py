"""Numba helpers shared by the CPU kernels (``kivi_cpu.py``, ``vidkv_cpu.py``): bit fields,
trits, float16/bfloat16 rounding, log8 codes, threads. Imported only when a CPU kernel runs.

Exactness rules every kernel follows (they are the reference's, ``streamvlm.quant``):

* float32 arithmetic, one IEEE operation at a time, in the reference's order: numba does not
  contract ``a * b + c`` into an FMA without ``fastmath`` (never set here), and every
  constant is a float32, so nothing is promoted to float64 by accident;
* sums over a group run element by element in float64, rounded once (``groups.group_sum``);
* rounding is to nearest even (``np.rint`` is ``torch.round``), conversions to float16 and
  bfloat16 too (``Tensor.to``; float16 by LLVM's own ``fptrunc``, see ``f16_bits``);
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
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..quant import scales
from ..quant.base import QuantError

# sessions encode and decode from several Python threads at once: only a thread-safe layer
# (OpenMP, the same libgomp torch loads, or TBB) may run the parallel loops; numba's
# fallback "workqueue" layer aborts the process on concurrent launches
numba.config.THREADING_LAYER = "threadsafe"

# compiled once per machine (cache); releases the GIL while it runs; divides like IEEE (and
# torch) instead of raising ZeroDivisionError, whose check per division keeps loops scalar
JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
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
    return out.numpy() if out.dtype == torch.float32 else u16(out)


_HALVES = (torch.float16, torch.bfloat16)


def numpy_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Numpy views of a block's tensors, as the kernels take them: on the CPU, contiguous, and
    16-bit floats as their uint16 bit patterns (``u16``)."""
    # (called per decode: every call here costs a few percent of a layer's decode)
    arrays = {}
    for name, t in tensors.items():
        if t.dtype in _HALVES:
            t = t.view(torch.uint16)
        if not (t.is_cpu and t.is_contiguous()):
            t = t.cpu().contiguous()
        arrays[name] = t.numpy()
    return arrays


_KERNEL_DTYPES = {
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.float32: np.float32,
    torch.float16: np.uint16,
    torch.bfloat16: np.uint16,
}


def new_output(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised CPU tensor for a kernel to fill, and the numpy view the kernel takes
    (16-bit floats as their uint16 bit patterns, like ``u16``). Allocated by numpy: half the
    cost of ``torch.empty`` and ``.numpy()``, which an encode pays for each of its ~10 fields."""
    array = np.empty(shape, _KERNEL_DTYPES[dtype])
    tensor = torch.from_numpy(array)
    return (tensor.view(dtype) if dtype in _HALVES else tensor), array


def u16(t: torch.Tensor) -> np.ndarray:
    """The bit patterns of a float16 / bfloat16 tensor, as numpy uint16 (no copy)."""
    return t.view(torch.uint16).numpy()


@functools.lru_cache(maxsize=1)
def trit_table() -> np.ndarray:
    """uint8 ``[256, 5]``: the base-3 digits of every byte (``packing.pack_trits`` layout)."""
    b = np.arange(256)
    return np.stack([(b // 3**k) % 3 for k in range(5)], axis=1).astype(np.uint8)


# log8 codes are 16 per octave of the ratio: buckets of 2**18 consecutive float32 bit patterns
# (32 per octave) hold at most one code boundary each, which ``log8_lookup`` checks
LOG8_SHIFT = 18


@functools.lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(log8 table float32 [256], ``log8_lookup`` of the nearest-code bounds), from the
    reference's own definitions (``scales``)."""
    log8 = scales.decode_log8(torch.arange(256, dtype=torch.uint8), torch.ones(1, dtype=torch.bfloat16))
    return log8.numpy().copy(), log8_lookup(scales.code_bounds(False).numpy())


def log8_lookup(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log8_code``'s tables for ``bounds`` (float64, ascending): per bucket of positive
    float32 ratios (bit pattern >> ``LOG8_SHIFT``), the code of its largest ratio (uint8) and
    the one bound inside it (float64; -1 where none), below which the code is one more."""
    n = 0x7F800000 >> LOG8_SHIFT  # every finite positive float32
    first = np.arange(n, dtype=np.uint64) << np.uint64(LOG8_SHIFT)
    last = first + np.uint64((1 << LOG8_SHIFT) - 1)
    # a code is how many bounds are >= the ratio (scales.encode_log8's searchsorted)
    code_at = [
        len(bounds) - np.searchsorted(bounds, x.astype(np.uint32).view(np.float32).astype(np.float64))
        for x in (first, last)
    ]
    step = code_at[0] - code_at[1]
    if step.max() > 1:
        raise QuantError("log8 lookup: two code bounds share a bucket; lower cpu_common.LOG8_SHIFT")
    inside = np.where(step == 1, bounds[np.minimum(len(bounds) - code_at[0], len(bounds) - 1)], -1.0)
    return code_at[1].astype(np.uint8), inside.astype(np.float64)


_matched = threading.local()  # per launching thread: the torch thread count numba was matched to


def match_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch's pool, never more: the two
    pools take turns (a kernel, then a torch op), so together they never oversubscribe.
    (numba's setting is per calling thread, like torch's pool size is per process: called
    before every launch, from whichever thread launches.)"""
    torch_threads = torch.get_num_threads()
    if getattr(_matched, "torch_threads", None) == torch_threads:
        return  # numba's count was set for this many on this thread (it costs a few us to ask)
    wanted = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    _matched.torch_threads = torch_threads


# ----- scalars ---------------------------------------------------------------------------


@intrinsic
def f16_bits(typingctx, x):
    """float32 -> float16 bit pattern (uint16), rounded to nearest even: LLVM's ``fptrunc``,
    one vector instruction on x86-64 with F16C and on ARMv8 (numba has no float16 type)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def f16_value(typingctx, bits):
    """float16 bit pattern (uint16) -> float32 (exact: ``fpext``)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def bf16_bits(typingctx, x):
    """float32 -> bfloat16 bit pattern (uint16), rounded to nearest even (finite inputs)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        lsb = builder.and_(builder.lshr(u, ir.Constant(i32, 16)), ir.Constant(i32, 1))
        rounded = builder.add(builder.add(u, ir.Constant(i32, 0x7FFF)), lsb)
        return builder.trunc(builder.lshr(rounded, ir.Constant(i32, 16)), ir.IntType(16))

    return types.uint16(types.float32), codegen


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


@intrinsic
def f32_bits(typingctx, x):
    """The bit pattern of a float32, as uint32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(**JIT)
def log8_code(s, hm, lookup):
    """``scales.encode_log8`` for one scale ``s`` under head max ``hm`` (float32): the number
    of bounds >= the ratio, from the ratio's bucket in ``lookup`` (``log8_lookup``) and one
    exact comparison (a search settled by comparisons cost 2.5x as much: 5 ns a code)."""
    if not s > np.float32(0.0):
        return np.uint8(255)
    ratio = s / (hm if hm > np.float32(0.0) else np.float32(1.0))
    codes, inside = lookup
    bucket = min(np.uint32(f32_bits(ratio) >> np.uint32(LOG8_SHIFT)), np.uint32(codes.shape[0] - 1))
    return np.uint8(codes[bucket] + (1 if inside[bucket] >= np.float64(ratio) else 0))


# ----- rows: unpack, pack, convert (loops LLVM vectorizes) -------------------------------


# one function per width, so that the codes per byte are a constant LLVM unrolls and vectorises
# (a width passed at run time makes every code a variable shift: 30x slower)


@njit(**JIT)
def _unpack1(row, n, out):
    for j in range(n // 8):
        b = row[j]
        for k in range(8):
            out[j * 8 + k] = (b >> k) & 1
    for i in range(n // 8 * 8, n):
        out[i] = (row[i >> 3] >> (i & 7)) & 1


@njit(**JIT)
def _unpack2(row, n, out):
    for j in range(n // 4):
        b = row[j]
        for k in range(4):
            out[j * 4 + k] = (b >> (2 * k)) & 3
    for i in range(n // 4 * 4, n):
        out[i] = (row[i >> 2] >> (2 * (i & 3))) & 3


@njit(**JIT)
def _unpack4(row, n, out):
    for j in range(n // 2):
        b = row[j]
        out[2 * j] = b & 15
        out[2 * j + 1] = b >> 4
    if n % 2:
        out[n - 1] = row[n // 2] & 15


@njit(**JIT)
def unpack_bits_row(row, n, bits, out):
    """The first ``n`` codes of a ``pack_bits`` row (1, 2, 4 or 8 bits) into ``out[:n]`` (uint8)."""
    if bits == 1:
        _unpack1(row, n, out)
    elif bits == 2:
        _unpack2(row, n, out)
    elif bits == 4:
        _unpack4(row, n, out)
    else:
        out[:n] = row[:n]


@njit(**JIT)
def _pack1(codes, n, row):
    for j in range(n // 8):
        acc = 0
        for k in range(8):
            acc |= codes[j * 8 + k] << k
        row[j] = acc
    _pack_tail(codes, n, 1, row)


@njit(**JIT)
def _pack2(codes, n, row):
    for j in range(n // 4):
        acc = 0
        for k in range(4):
            acc |= codes[j * 4 + k] << (2 * k)
        row[j] = acc
    _pack_tail(codes, n, 2, row)


@njit(**JIT)
def _pack4(codes, n, row):
    for j in range(n // 2):
        row[j] = codes[2 * j] | (codes[2 * j + 1] << 4)
    _pack_tail(codes, n, 4, row)


@njit(**JIT)
def _pack_tail(codes, n, bits, row):
    # the last, partial byte (zero padded)
    per = 8 // bits
    if n % per:
        acc = 0
        for i in range(n // per * per, n):
            acc |= np.int64(codes[i]) << ((i % per) * bits)
        row[n // per] = acc


@njit(**JIT)
def pack_bits_row(codes, n, bits, row):
    """``pack_bits`` of ``codes[:n]`` (each < 2**bits; 1, 2, 4 or 8 bits) into ``row`` (zero padded)."""
    if bits == 1:
        _pack1(codes, n, row)
    elif bits == 2:
        _pack2(codes, n, row)
    elif bits == 4:
        _pack4(codes, n, row)
    else:
        row[:n] = codes[:n]


@njit(**JIT)
def unpack_trits_row(row, n, trit_table, out):
    """Trits ``0 .. n`` of a ``pack_trits`` row into ``out[:n]``; ``trit_table[b, k]`` is digit k of b."""
    for j in range(n // 5):
        # digits by constant divisions (LLVM makes them multiplications); unsigned offsets,
        # so numba adds no negative-index checks
        b = row[j]
        i = np.uint64(j) * np.uint64(5)
        out[i] = b % 3
        out[i + np.uint64(1)] = (b // 3) % 3
        out[i + np.uint64(2)] = (b // 9) % 3
        out[i + np.uint64(3)] = (b // 27) % 3
        out[i + np.uint64(4)] = b // 81
    for i in range(n // 5 * 5, n):
        out[i] = trit_table[row[i // 5], i % 5]


@njit(**JIT)
def pack_trits_row(codes, n, row):
    """``pack_trits`` of ``codes[:n]`` (each in 0..2) into ``row`` (zero padded)."""
    for j in range(n // 5):
        # unsigned offsets: no negative-index checks; indexed, not a 5-code slice per byte
        # (building that view each time kept the loop scalar: 12x slower)
        i = np.uint64(j) * np.uint64(5)
        row[j] = (
            codes[i]
            + 3 * codes[i + np.uint64(1)]
            + 9 * codes[i + np.uint64(2)]
            + 27 * codes[i + np.uint64(3)]
            + 81 * codes[i + np.uint64(4)]
        )
    if n % 5:
        acc = 0
        w = 1
        for i in range(n // 5 * 5, n):
            acc += np.int64(codes[i]) * w
            w *= 3
        row[n // 5] = acc


@njit(**JIT)
def emit_row(vals, out, h, t, mode):
    """``out[h, t, :] = vals`` converted like ``Tensor.to(out dtype)``."""
    dest = out[h, t]
    if mode == OUT_F32:
        for d in range(vals.shape[0]):
            dest[d] = vals[d]
    elif mode == OUT_F16:
        for d in range(vals.shape[0]):
            dest[d] = f16_bits(vals[d])
    else:
        for d in range(vals.shape[0]):
            dest[d] = bf16_bits(vals[d])
