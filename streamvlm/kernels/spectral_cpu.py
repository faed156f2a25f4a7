"""``quant.spectral``'s transform on a CPU, compiled by numba, bit for bit.

The kernels transform many tokens at once: a block ``[rows, lanes]`` holds row ``j`` (a
channel or a component) of up to ``lanes`` tokens, so every step below is a loop over
tokens that LLVM turns into vector instructions (a length-64 transform done one token at
a time has strides of 1 to 16 and does not vectorise). Each step is the reference's step,
in its order, with one rounding per operation (numba contracts no multiply-add without
``fastmath``), so the results are the reference's to the bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cpu_common import JIT

# tokens per block: at 32 the loops of the stages run too short to pay for their set-up
LANES = 128
# floats per row of a block: 9 cache lines, so the rows of a block, and the blocks of
# ``scratch``, start at different offsets within a 4 KiB page. Rows exactly 4 KiB apart (a
# power-of-two width, blocks allocated back to back) can make the CPU stall loads on earlier
# stores to the same page offset ("4K aliasing"); a precaution: no difference was measurable
# within this machine's run-to-run noise.
ROW = LANES + 16


@njit(**JIT)
def scratch(m):
    """(components, signal, work_re, work_im, zero): the blocks the transforms of length ``m``
    take, in one allocation, block ``i`` starting ``i`` KiB past a multiple of 4 KiB from the
    allocation's start."""
    half = max(m // 2, 1)
    sizes = (m * ROW, m * ROW, half * ROW, half * ROW, ROW)
    buf = np.zeros(sum(sizes) + 5 * 1024, np.float32)
    blocks = []
    at = 0
    for i in range(5):
        at += (256 * i - at) % 1024  # block i starts i KiB past a 4 KiB boundary
        blocks.append(buf[at : at + sizes[i]])
        at += sizes[i]
    return (
        blocks[0].reshape(m, ROW),
        blocks[1].reshape(m, ROW),
        blocks[2].reshape(half, ROW),
        blocks[3].reshape(half, ROW),
        blocks[4],
    )


@njit(**JIT)
def _stages(re, im, n, stage_cos, stage_sin, sign):
    # spectral._stages: radix-2 decimation in time over rows, bit-reversed input
    half = re.shape[0]
    span = 1
    while span < half:
        for base in range(0, half, 2 * span):
            for j in range(span):
                wr = stage_cos[span - 1 + j]
                wi = stage_sin[span - 1 + j] * sign
                pr, pi, qr, qi = re[base + j], im[base + j], re[base + j + span], im[base + j + span]
                for lane in range(n):
                    tr = wr * qr[lane] - wi * qi[lane]
                    ti = wr * qi[lane] + wi * qr[lane]
                    a, b = pr[lane], pi[lane]
                    pr[lane] = a + tr
                    pi[lane] = b + ti
                    qr[lane] = a - tr
                    qi[lane] = b - ti
        span *= 2


@njit(**JIT)
def _direct(src, n, basis, dst):
    # spectral._direct: dst[j] = sum over k in index order of src[k] * basis[k, j]
    for j in range(dst.shape[0]):
        d = dst[j]
        b = basis[0, j]
        s = src[0]
        for lane in range(n):
            d[lane] = s[lane] * b
        for k in range(1, src.shape[0]):
            b = basis[k, j]
            s = src[k]
            for lane in range(n):
                d[lane] = d[lane] + s[lane] * b


@njit(**JIT)
def inverse_lanes(comps, n, tables, work_re, work_im, zero, rows, cols):
    """``from_rfft_components`` of lanes ``0 .. n`` of ``comps [m, lanes]``: channel ``j`` of lane
    ``i`` into ``rows[i, cols[j]]``. ``work_re``/``work_im``: ``[m // 2, lanes]`` scratch;
    ``zero``: ``[lanes]`` zeros. (Through ``cols`` a kernel puts each channel where it belongs
    in a token's row: a gather of the row afterwards cost a third of the key decode.)"""
    turn_cos, turn_sin, stage_cos, stage_sin, order, inverse, _ = tables
    m = comps.shape[0]
    if inverse.shape[0]:
        out = np.empty((m, n), np.float32)
        _direct(comps, n, inverse, out)
        for j in range(m):
            col = cols[j]
            for lane in range(n):
                rows[lane, col] = out[j, lane]
        return
    half = m // 2
    for k in range(half):
        ar, br = comps[k], comps[half - k]  # real parts of bins k and half - k
        ai = comps[half + k] if k > 0 else zero  # imaginary parts (none for bins 0 and half)
        bi = comps[2 * half - k] if k > 0 else zero
        c, s = turn_cos[k], turn_sin[k]
        dest = order[k]  # bit reversal is its own inverse: slot order[k] holds bin k
        zr, zi = work_re[dest], work_im[dest]
        for lane in range(n):
            even_r = ar[lane] + br[lane]
            even_i = ai[lane] - bi[lane]
            diff_r = ar[lane] - br[lane]
            diff_i = ai[lane] + bi[lane]
            odd_r = diff_r * c - diff_i * s
            odd_i = diff_r * s + diff_i * c
            zr[lane] = even_r - odd_i
            zi[lane] = even_i + odd_r
    _stages(work_re, work_im, n, stage_cos, stage_sin, np.float32(1.0))
    scale = np.float32(1.0 / m)
    for k in range(half):
        zr, zi, even, odd = work_re[k], work_im[k], cols[2 * k], cols[2 * k + 1]
        for lane in range(n):
            rows[lane, even] = zr[lane] * scale
            rows[lane, odd] = zi[lane] * scale


@njit(**JIT)
def forward_lanes(signal, n, tables, work_re, work_im, comps):
    """``rfft_components`` of lanes ``0 .. n`` of ``signal [m, lanes]`` into ``comps [m, lanes]``."""
    turn_cos, turn_sin, stage_cos, stage_sin, order, _, forward = tables
    m = signal.shape[0]
    if forward.shape[0]:
        _direct(signal, n, forward, comps)
        return
    half = m // 2
    for k in range(half):
        src = order[k]
        work_re[k, :n] = signal[2 * src, :n]
        work_im[k, :n] = signal[2 * src + 1, :n]
    _stages(work_re, work_im, n, stage_cos, stage_sin, np.float32(-1.0))
    h = np.float32(0.5)
    for k in range(half + 1):
        ar, ai = work_re[k % half], work_im[k % half]
        br, bi = work_re[(half - k) % half], work_im[(half - k) % half]
        c, s = turn_cos[k], turn_sin[k]
        real = comps[k]
        if 0 < k < half:
            imag = comps[half + k]
            for lane in range(n):
                even_r = (ar[lane] + br[lane]) * h
                even_i = (ai[lane] - bi[lane]) * h
                odd_r = (ai[lane] + bi[lane]) * h
                odd_i = (br[lane] - ar[lane]) * h
                real[lane] = even_r + (c * odd_r + s * odd_i)
                imag[lane] = even_i + (c * odd_i - s * odd_r)
        else:  # bins 0 and half: their imaginary parts are zero and not kept
            for lane in range(n):
                even_r = (ar[lane] + br[lane]) * h
                odd_r = (ai[lane] + bi[lane]) * h
                odd_i = (br[lane] - ar[lane]) * h
                real[lane] = even_r + (c * odd_r + s * odd_i)
