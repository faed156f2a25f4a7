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
    """(components, work_re, work_im): the blocks the transforms of length ``m`` take, in one
    allocation, block ``i`` starting ``i`` KiB past a multiple of 4 KiB from its start."""
    half = max(m // 2, 1)
    sizes = (m * ROW, half * ROW, half * ROW)
    buf = np.empty(sum(sizes) + 3 * 1024, np.float32)
    blocks = []
    at = 0
    for i in range(3):
        at += (256 * i - at) % 1024  # block i starts i KiB past a 4 KiB boundary
        blocks.append(buf[at : at + sizes[i]])
        at += sizes[i]
    return blocks[0].reshape(m, ROW), blocks[1].reshape(half, ROW), blocks[2].reshape(half, ROW)


@njit(**JIT)
def _butterfly(pr, pi, qr, qi, wr, wi):
    """One radix-2 butterfly, ``p + w q`` and ``p - w q`` (``spectral._stages``' operations, in
    its order), as (real, imaginary) of each."""
    tr = wr * qr - wi * qi
    ti = wr * qi + wi * qr
    return pr + tr, pi + ti, pr - tr, pi - ti


@njit(**JIT)
def _stages(re, im, n, stage_cos, stage_sin, sign, first, last):
    # spectral._stages for spans first, 2 * first, .. below last: radix-2 decimation in time
    # over rows, bit-reversed input
    half = re.shape[0]
    span = first
    while span < min(half, last):
        for base in range(0, half, 2 * span):
            for j in range(span):
                wr = stage_cos[span - 1 + j]
                wi = stage_sin[span - 1 + j] * sign
                p, q = base + j, base + j + span
                for lane in range(n):
                    re[p, lane], im[p, lane], re[q, lane], im[q, lane] = _butterfly(
                        re[p, lane], im[p, lane], re[q, lane], im[q, lane], wr, wi
                    )
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
def _turned_bin(comps, k, half, c, s, lane):
    """Complex bin ``k`` of the half-length signal in lane ``lane`` (``from_rfft_components``:
    even part + i * odd part, from the real components' bins ``k`` and ``half - k``). Bins 0
    and half have no imaginary part: it counts as +0, like the reference's zero column."""
    ar, br = comps[k, lane], comps[half - k, lane]
    z = np.float32(0.0)
    ai = comps[half + k, lane] if k > 0 else z
    bi = comps[2 * half - k, lane] if k > 0 else z
    diff_r, diff_i = ar - br, ai + bi
    odd_r = diff_r * c - diff_i * s
    odd_i = diff_r * s + diff_i * c
    return (ar + br) - odd_i, (ai - bi) + odd_r


@njit(**JIT)
def inverse_lanes(comps, n, tables, work_re, work_im, chan, cols):
    """``from_rfft_components`` of lanes ``0 .. n`` of ``comps [m, lanes]``: channel ``j`` of lane
    ``i`` into ``chan[cols[j], i]``. ``work_re``/``work_im``: ``[m // 2, lanes]`` scratch.
    (Through ``cols`` a kernel puts each channel in its row of a block holding every channel
    of the head, which it then transposes once.)

    The steps are the reference's, but the first stage runs in the same pass as the turn that
    feeds it, and the last in the same pass as the scaling after it (``m >= 8``): each pass
    stores the whole block, and stores are what the transform waits on. The loops index the
    2-d blocks directly: a row view per loop (``comps[k]``) costs a reference count update
    each, which here cost more than the arithmetic."""
    turn_cos, turn_sin, stage_cos, stage_sin, order, inverse, _ = tables
    m = comps.shape[0]
    if inverse.shape[0]:
        out = np.empty((m, n), np.float32)
        _direct(comps, n, inverse, out)
        for j in range(m):
            chan[cols[j], :n] = out[j, :n]
        return
    half = m // 2
    scale = np.float32(1.0 / m)
    if half < 4:  # too short to fuse: the reference's passes one after the other
        for k in range(half):
            slot, c, s = order[k], turn_cos[k], turn_sin[k]
            for lane in range(n):
                work_re[slot, lane], work_im[slot, lane] = _turned_bin(comps, k, half, c, s, lane)
        _stages(work_re, work_im, n, stage_cos, stage_sin, np.float32(1.0), 1, half)
        for k in range(half):
            even, odd = cols[2 * k], cols[2 * k + 1]
            for lane in range(n):
                chan[even, lane] = work_re[k, lane] * scale
                chan[odd, lane] = work_im[k, lane] * scale
        return
    # the turn into bit-reversed slots, two slots at a time, and the span-1 stage on them
    wr, wi = stage_cos[0], stage_sin[0]
    for slot in range(0, half, 2):
        k0, k1 = order[slot], order[slot + 1]  # bit reversal is its own inverse
        c0, s0, c1, s1 = turn_cos[k0], turn_sin[k0], turn_cos[k1], turn_sin[k1]
        for lane in range(n):
            a, b = _turned_bin(comps, k0, half, c0, s0, lane)
            zr, zi = _turned_bin(comps, k1, half, c1, s1, lane)
            work_re[slot, lane], work_im[slot, lane], work_re[slot + 1, lane], work_im[slot + 1, lane] = (
                _butterfly(a, b, zr, zi, wr, wi)
            )
    span = half // 2
    _stages(work_re, work_im, n, stage_cos, stage_sin, np.float32(1.0), 2, span)
    # the last stage (one group of span butterflies), each result scaled into its channels
    for j in range(span):
        wr, wi = stage_cos[span - 1 + j], stage_sin[span - 1 + j]
        p_even, p_odd = cols[2 * j], cols[2 * j + 1]
        q_even, q_odd = cols[2 * (j + span)], cols[2 * (j + span) + 1]
        for lane in range(n):
            pr, pi, qr, qi = _butterfly(
                work_re[j, lane], work_im[j, lane], work_re[j + span, lane], work_im[j + span, lane], wr, wi
            )
            chan[p_even, lane] = pr * scale
            chan[p_odd, lane] = pi * scale
            chan[q_even, lane] = qr * scale
            chan[q_odd, lane] = qi * scale


@njit(**JIT)
def forward_lanes(signal, rows, n, tables, work_re, work_im, comps):
    """``rfft_components`` of lanes ``0 .. n`` of the signal whose channel ``j`` is row
    ``rows[j]`` of ``signal`` (a block of every channel of a head, ``[channels, lanes]``) into
    ``comps [m, lanes]``. Like ``inverse_lanes``: 2-d indexing, and the first stage in the
    same pass as the loads that feed it."""
    turn_cos, turn_sin, stage_cos, stage_sin, order, _, forward = tables
    m = rows.shape[0]
    if forward.shape[0]:
        picked = np.empty((m, n), np.float32)
        for j in range(m):
            picked[j] = signal[rows[j], :n]
        _direct(picked, n, forward, comps)
        return
    half = m // 2
    if half < 2:  # one complex sample: no stage
        for lane in range(n):
            work_re[0, lane], work_im[0, lane] = signal[rows[0], lane], signal[rows[1], lane]
    else:
        # even samples the real parts, odd ones the imaginary parts, into bit-reversed slots,
        # two slots at a time through the span-1 stage
        wr, wi = stage_cos[0], stage_sin[0] * np.float32(-1.0)
        for slot in range(0, half, 2):
            p_re, p_im = rows[2 * order[slot]], rows[2 * order[slot] + 1]
            q_re, q_im = rows[2 * order[slot + 1]], rows[2 * order[slot + 1] + 1]
            for lane in range(n):
                work_re[slot, lane], work_im[slot, lane], work_re[slot + 1, lane], work_im[slot + 1, lane] = (
                    _butterfly(
                        signal[p_re, lane], signal[p_im, lane], signal[q_re, lane], signal[q_im, lane], wr, wi
                    )
                )
        _stages(work_re, work_im, n, stage_cos, stage_sin, np.float32(-1.0), 2, half)
    h = np.float32(0.5)
    for k in range(half + 1):
        a, b = k % half, (half - k) % half
        c, s = turn_cos[k], turn_sin[k]
        if 0 < k < half:
            for lane in range(n):
                ar, ai, br, bi = work_re[a, lane], work_im[a, lane], work_re[b, lane], work_im[b, lane]
                even_r = (ar + br) * h
                even_i = (ai - bi) * h
                odd_r = (ai + bi) * h
                odd_i = (br - ar) * h
                comps[k, lane] = even_r + (c * odd_r + s * odd_i)
                comps[half + k, lane] = even_i + (c * odd_i - s * odd_r)
        else:  # bins 0 and half: their imaginary parts are zero and not kept
            for lane in range(n):
                ar, ai, br, bi = work_re[a, lane], work_im[a, lane], work_re[b, lane], work_im[b, lane]
                even_r = (ar + br) * h
                odd_r = (ai + bi) * h
                odd_i = (br - ar) * h
                comps[k, lane] = even_r + (c * odd_r + s * odd_i)
