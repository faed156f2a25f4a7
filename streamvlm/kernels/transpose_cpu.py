"""Matrix transposes for the CPU kernels, 8 x 8 elements at a time in vector registers.

The ``vidkv`` key decoder works on blocks of tokens laid out one token per vector lane
(``spectral_cpu``), while codes come packed and outputs go out one token per row: between
the two layouts sits a transpose. Element by element it is a scalar load and a scalar store
at a stride per element, which cost the decoder as much as its whole transform; in registers
it is 8 vector loads, 24 shuffles and 8 vector stores per 64 elements.

numba has no shuffles, so the 8 x 8 tile is an intrinsic written in LLVM IR: plain
``shufflevector`` on ``<8 x T>`` (no target-specific instruction), which LLVM lowers to the
unpack / shuffle / lane-permute sequence of whatever the machine has (SSE, AVX, AVX-512,
NEON). The tile may convert float32 to the output's 16-bit float on the way (``fptrunc`` for
float16, round to nearest even for bfloat16: the same operations as ``cpu_common``'s
``f16_bits`` and ``bf16_bits``), so the layout change and the conversion are one pass.

Callers use the ``transpose_*`` functions, which check the shapes once and run the ragged
edges (rows or columns not a multiple of 8) element by element: the intrinsic itself
reads and writes through raw addresses and checks nothing.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .cpu_common import JIT, OUT_BF16, OUT_F16, bf16_bits, f16_bits

TILE = 8

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(mask)), mask))


def _transpose_rows(builder, rows):
    """The 8 columns of 8 vectors ``<8 x T>``, as 8 vectors: interleave pairs, then pairs of
    pairs, then halves (the classic 3-step network; any element type)."""
    pairs = []
    for i in range(0, 8, 2):
        a, b = rows[i], rows[i + 1]
        pairs.append(_shuffle(builder, a, b, [0, 8, 1, 9, 4, 12, 5, 13]))
        pairs.append(_shuffle(builder, a, b, [2, 10, 3, 11, 6, 14, 7, 15]))
    low, high = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    quads = []
    for a, b in ((0, 2), (1, 3), (4, 6), (5, 7)):
        quads.append(_shuffle(builder, pairs[a], pairs[b], low))
        quads.append(_shuffle(builder, pairs[a], pairs[b], high))
    # quads 0..3 hold columns (0, 4), (1, 5), (2, 6), (3, 7) of rows 0-3; quads 4..7 of rows 4-7
    cols = [None] * 8
    for i in range(4):
        cols[i] = _shuffle(builder, quads[i], quads[i + 4], [0, 1, 2, 3, 8, 9, 10, 11])
        cols[i + 4] = _shuffle(builder, quads[i], quads[i + 4], [4, 5, 6, 7, 12, 13, 14, 15])
    return cols


def _to_f16(builder, v):
    return builder.bitcast(
        builder.fptrunc(v, ir.VectorType(ir.HalfType(), 8)), ir.VectorType(ir.IntType(16), 8)
    )


def _to_bf16(builder, v):
    # cpu_common.bf16_bits on 8 lanes: round to nearest even, keep the high half
    vi32 = ir.VectorType(_I32, 8)
    u = builder.bitcast(v, vi32)

    def splat(x):
        return ir.Constant(vi32, [x] * 8)

    lsb = builder.and_(builder.lshr(u, splat(16)), splat(1))
    rounded = builder.add(builder.add(u, splat(0x7FFF)), lsb)
    return builder.trunc(builder.lshr(rounded, splat(16)), ir.VectorType(ir.IntType(16), 8))


def _tile_intrinsic(src_type, convert):
    """An intrinsic ``(src, src_stride, dst, dst_stride)`` (addresses and row strides in bytes)
    that writes the transpose of the 8 x 8 tile at ``src`` to ``dst``, each element through
    ``convert``."""

    def codegen(context, builder, signature, args):
        src, src_stride, dst, dst_stride = args
        rows = []
        for i in range(TILE):
            address = builder.add(src, builder.mul(src_stride, ir.Constant(_I64, i)))
            rows.append(
                builder.load(builder.inttoptr(address, ir.VectorType(src_type, 8).as_pointer()), align=1)
            )
        for i, col in enumerate(_transpose_rows(builder, rows)):
            value = convert(builder, col)
            address = builder.add(dst, builder.mul(dst_stride, ir.Constant(_I64, i)))
            builder.store(value, builder.inttoptr(address, value.type.as_pointer()), align=1)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, src, src_stride, dst, dst_stride):
        return types.void(types.intp, types.intp, types.intp, types.intp), codegen

    return tile


_tile_u8 = _tile_intrinsic(ir.IntType(8), lambda builder, v: v)
_tile_f32 = _tile_intrinsic(ir.FloatType(), lambda builder, v: v)
_tile_f16 = _tile_intrinsic(ir.FloatType(), _to_f16)
_tile_bf16 = _tile_intrinsic(ir.FloatType(), _to_bf16)


@njit(**JIT)
def _tiled(src, dst, rows, cols):
    """Whether the tiles may do the work: checks that the block fits (else raises)."""
    if rows > src.shape[0] or cols > src.shape[1] or cols > dst.shape[0] or rows > dst.shape[1]:
        raise ValueError("transpose: the block does not fit its source or destination")
    # the tiles read and write whole rows of 8: elements one by one where rows have gaps
    return src.strides[1] == src.itemsize and dst.strides[1] == dst.itemsize


@njit(**JIT)
def padded(count):
    """``count`` rounded up to whole tiles."""
    return -(-count // TILE) * TILE


@njit(**JIT)
def transpose_u8(src, start, stride, rows, cols, dst):
    """``dst[c, r] = src[start + r * stride + c]`` for ``r < rows``, ``c < cols``, in whole tiles:
    rows and columns up to ``padded(rows)``, ``padded(cols)`` are read and written too, so
    ``src`` (1-d uint8) must extend that far and ``dst`` (uint8, contiguous rows) hold them.
    (Rounding up costs a few bytes of padding; the ragged edges one element at a time cost
    as much as the whole transpose.)"""
    pr, pc = padded(rows), padded(cols)
    if pr and pc and start + (pr - 1) * stride + pc > src.shape[0]:
        raise ValueError("transpose_u8: the source does not extend to whole tiles; pad it")
    if pc > dst.shape[0] or pr > dst.shape[1] or dst.strides[1] != 1:
        raise ValueError("transpose_u8: the destination does not hold whole tiles")
    ds = dst.strides[0]
    s0, d0 = src.ctypes.data + start, dst.ctypes.data
    for r in range(0, pr, TILE):
        for c in range(0, pc, TILE):
            _tile_u8(s0 + r * stride + c, stride, d0 + c * ds + r, ds)


@njit(**JIT)
def transpose_out(src, dst, rows, cols, mode):
    """``dst[c, r] = src[r, c]`` converted like ``Tensor.to`` (``mode``: ``cpu_common.OUT_*``),
    for ``r < rows``, ``c < cols``: ``src`` float32, ``dst`` float32 or 16-bit patterns."""
    tiled = _tiled(src, dst, rows, cols)
    fr, fc = (rows - rows % TILE, cols - cols % TILE) if tiled else (0, 0)
    ss, ds = src.strides[0], dst.strides[0]
    size = dst.itemsize
    s0, d0 = src.ctypes.data, dst.ctypes.data
    for r in range(0, fr, TILE):
        for c in range(0, fc, TILE):
            s, d = s0 + r * ss + c * 4, d0 + c * ds + r * size
            if mode == OUT_F16:
                _tile_f16(s, ss, d, ds)
            elif mode == OUT_BF16:
                _tile_bf16(s, ss, d, ds)
            else:
                _tile_f32(s, ss, d, ds)
    for r in range(rows):
        for c in range(fc if r < fr else 0, cols):
            if mode == OUT_F16:
                dst[c, r] = f16_bits(src[r, c])
            elif mode == OUT_BF16:
                dst[c, r] = bf16_bits(src[r, c])
            else:
                dst[c, r] = src[r, c]
