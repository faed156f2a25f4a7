"""``vidkv`` encode and decode on a CPU, compiled by numba (standard layout only).

Reference: ``streamvlm.quant.vidkv.VidKVCodec``; same bytes, same floats (rules in
``cpu_common``). Each kernel runs one head per numba thread. The sign tier's transform is
``quant.spectral``'s fixed sequence of float32 steps, repeated by ``spectral_cpu`` over
blocks of tokens, and the value energies that choose the salient tokens are
``selection.token_energy``'s fixed order of float32 sums (the largest taken by a partition,
ties to the earlier token, as the reference's stable sort does). What stays in torch, called
exactly as the reference calls it: the key channel tiers (``VidKVCodec.calibrate``, once per
layer).

Everything else (min-max and log8 metadata, signs, ternaries, packing, scatter into the
output) is a numba loop that reads the input once and writes each output byte once.

Encoding checks its input (``KVCodec.check_values``: finite, within ``max_abs``) without a
pass of its own: from the value energies and from the key kernel's peak ``|x|``, which the
kernels compute as they go (a separate pass cost 10-16% of an encode).
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from numba import njit, prange

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import balanced_group, num_groups
from ..quant.packing import packed_length
from ..quant.selection import salient_count, tier_indices
from ..quant.spectral import spectral_tables
from ..quant.vidkv import VidKVCodec
from .cpu_common import (
    JIT,
    OUT_F32,
    PARALLEL_JIT,
    as_numpy_out,
    bf16_round_up_bits,
    bf16_value,
    emit_row,
    log8_code,
    match_torch_threads,
    new_output,
    numpy_arrays,
    pack_bits_row,
    pack_trits_row,
    tables,
    trit_table,
    unpack_bits_row,
    unpack_trits_row,
)
from .spectral_cpu import LANES, ROW, forward_lanes, inverse_lanes, scratch
from .transpose_cpu import TILE, padded, transpose_out, transpose_u8

# ----- log8 min-max (uniform.encode_log8_minmax / decode_log8_minmax) --------------------


@njit(**JIT)
def _zero_units(bits):
    return 4 if bits <= 2 else 2  # uniform.zero_units


@njit(**JIT)
def _log8_step(lo, hi, levels, units):
    # uniform._log8_step, operation by operation
    return max((hi - lo) / levels, ((abs(lo) * np.float32(1.03)) * units) / np.float32(127.0))


@njit(**JIT)
def _group_steps(steps, lows, hm, bits, nearest, table, scale_h, zero_h, g, s, zf):
    """Group ``g``'s log8 step codes and int8 zero points of one tier's channels (into
    ``scale_h[:, g]``, ``zero_h[:, g]``), and the decoded step ``s`` and offset ``zf`` that
    quantize its values (``uniform.encode_log8_minmax``)."""
    units = np.float32(_zero_units(bits))
    for j in range(steps.shape[0]):
        code = log8_code(steps[j], hm, nearest)
        sj = table[code] * hm
        sj = sj if sj > np.float32(0.0) else np.float32(1.0)
        z = min(max(np.rint((lows[j] / sj) * units), np.float32(-128.0)), np.float32(127.0))
        scale_h[j, g] = code
        zero_h[j, g] = np.int8(z)
        s[j] = sj
        zf[j] = z / units


@njit(**JIT)
def _encode_uniform_tiers(xu_h, n4, group, nearest, table, tier4, tier2, h):
    """The 4-bit and 2-bit key tiers of head ``h`` from its gathered channels ``xu_h``
    ``[tokens, n4 + n2]`` (4-bit tier first), each channel in groups of tokens (codes
    token-major); returns the largest ``|x|`` among them, nan if one is nan. One pass for both
    tiers (per-channel levels): the 4-bit tier alone is too narrow (4 channels) for its loops
    to pay for themselves."""
    tokens, c = xu_h.shape
    n2 = c - n4
    n_groups = max(tier4[1].shape[2], tier2[1].shape[2])
    levels = np.empty(c, np.float32)
    units = np.empty(c, np.float32)
    for j in range(c):
        bits = 4 if j < n4 else 2
        levels[j] = np.float32((1 << bits) - 1)
        units[j] = np.float32(_zero_units(bits))
    lows = np.empty((n_groups, c), np.float32)
    steps = np.empty((n_groups, c), np.float32)
    top4 = top2 = peak = np.float32(0.0)
    lo = np.empty(c, np.float32)
    hi = np.empty(c, np.float32)
    for g in range(n_groups):
        start, stop = g * group, min(tokens, g * group + group)
        lo[:] = xu_h[start]
        hi[:] = xu_h[start]
        for t in range(start + 1, stop):
            x_t = xu_h[t]
            for j in range(c):
                # numpy's min and max keep a nan (the builtins drop it in one argument order)
                lo[j] = np.minimum(lo[j], x_t[j])
                hi[j] = np.maximum(hi[j], x_t[j])
        for j in range(c):
            steps[g, j] = _log8_step(lo[j], hi[j], levels[j], units[j])
            lows[g, j] = lo[j]
            peak = np.maximum(peak, np.maximum(-lo[j], hi[j]))
        for j in range(n4):
            top4 = max(top4, steps[g, j])
        for j in range(n4, c):
            top2 = max(top2, steps[g, j])
    hm4_bits, hm2_bits = bf16_round_up_bits(top4), bf16_round_up_bits(top2)
    hm4, hm2 = bf16_value(hm4_bits), bf16_value(hm2_bits)
    q4 = np.empty(tokens * n4, np.uint8)
    q2 = np.empty(tokens * n2, np.uint8)
    s = np.empty(c, np.float32)
    zf = np.empty(c, np.float32)
    s4, zf4, s2, zf2 = s[:n4], zf[:n4], s[n4:], zf[n4:]
    for g in range(n_groups):
        # each tier's own loop over its own 2-d metadata (a branch on the tier per channel,
        # storing into the tiers' 3-d arrays, took twice as long)
        _group_steps(
            steps[g, :n4], lows[g, :n4], hm4, 4, nearest, table, tier4[1][h], tier4[2][h], g, s4, zf4
        )
        _group_steps(
            steps[g, n4:], lows[g, n4:], hm2, 2, nearest, table, tier2[1][h], tier2[2][h], g, s2, zf2
        )
        for t in range(g * group, min(tokens, g * group + group)):
            x4, x2 = xu_h[t, :n4], xu_h[t, n4:]
            q4_t, q2_t = q4[t * n4 : (t + 1) * n4], q2[t * n2 : (t + 1) * n2]
            for j in range(n4):
                v = np.rint(x4[j] / s4[j] - zf4[j])
                q4_t[j] = np.uint8(min(max(v, np.float32(0.0)), np.float32(15.0)))
            for j in range(n2):
                v = np.rint(x2[j] / s2[j] - zf2[j])
                q2_t[j] = np.uint8(min(max(v, np.float32(0.0)), np.float32(3.0)))
    if n4:
        pack_bits_row(q4, tokens * n4, 4, tier4[0][h])
        tier4[3][h] = hm4_bits
    if n2:
        pack_bits_row(q2, tokens * n2, 2, tier2[0][h])
        tier2[3][h] = hm2_bits
    return peak


@njit(**JIT)
def _encode_rows(x_h, rows, group, bits, nearest, table, codes_row, scale_h, zero_h):
    """Tokens ``rows`` of one head, each in groups of channels (codes row-major); returns the
    head's scale maximum as bfloat16 bits."""
    head_dim = x_h.shape[1]
    n_rows = rows.shape[0]
    n_groups = scale_h.shape[1]
    levels = np.float32((1 << bits) - 1)
    units = np.float32(_zero_units(bits))
    lows = np.empty((n_rows, n_groups), np.float32)
    steps = np.empty((n_rows, n_groups), np.float32)
    top = np.float32(0.0)
    for r in range(n_rows):
        x_r = x_h[rows[r]]
        for g in range(n_groups):
            x_g = x_r[g * group : g * group + group]
            lo = x_g[0]
            hi = lo
            for d in range(x_g.shape[0]):
                lo = min(lo, x_g[d])
                hi = max(hi, x_g[d])
            steps[r, g] = _log8_step(lo, hi, levels, units)
            lows[r, g] = lo
            top = max(top, steps[r, g])
    hm_bits = bf16_round_up_bits(top)
    hm = bf16_value(hm_bits)
    q = np.empty(n_rows * head_dim, np.uint8)
    for r in range(n_rows):
        x_r = x_h[rows[r]]
        for g in range(n_groups):
            code = log8_code(steps[r, g], hm, nearest)
            s = table[code] * hm
            s = s if s > np.float32(0.0) else np.float32(1.0)
            z = min(max(np.rint((lows[r, g] / s) * units), np.float32(-128.0)), np.float32(127.0))
            scale_h[r, g] = code
            zero_h[r, g] = np.int8(z)
            zf = z / units
            x_g = x_r[g * group : g * group + group]
            q_g = q[r * head_dim + g * group : r * head_dim + g * group + x_g.shape[0]]
            for d in range(x_g.shape[0]):
                v = np.rint(x_g[d] / s - zf)
                q_g[d] = np.uint8(min(max(v, np.float32(0.0)), levels))
    pack_bits_row(q, n_rows * head_dim, bits, codes_row)
    return hm_bits


@njit(**JIT)
def _log8_codes(levels, nearest, codes_h):
    """``scales.encode_log8(levels, round_up=False)`` of one head: codes into ``codes_h``
    (levels ``[groups, n]``, codes ``[n, groups]``); returns the head max as bfloat16 bits."""
    top = np.float32(0.0)
    for g in range(levels.shape[0]):
        for k in range(levels.shape[1]):
            top = max(top, levels[g, k])
    hm_bits = bf16_round_up_bits(top)
    hm = bf16_value(hm_bits)
    for g in range(levels.shape[0]):
        for k in range(levels.shape[1]):
            codes_h[k, g] = log8_code(levels[g, k], hm, nearest)
    return hm_bits


# ----- keys ------------------------------------------------------------------------------


@njit(**JIT)
def _encode_keys_head(
    h, x, order, n4, n_u, group, nearest, table, spectral, tier4, tier2, signs, k1_scale, k1_max, peaks
):
    """Head ``h``'s key tiers, and into ``peaks[h]`` the largest ``|x|`` of the head (nan if one is
    nan: the caller checks the input from it, so a bad value runs through; no index here depends
    on a value, and log8 codes clamp theirs)."""
    heads, tokens, head_dim = x.shape
    m = head_dim - n_u
    n_groups = k1_scale.shape[2]
    x_h = x[h]
    i_u, i_1 = order[h, :n_u], order[h, n_u:]
    peak = np.float32(0.0)
    if n_u:
        # the uniform tiers' channels, token-major (a group is one channel over its tokens)
        xu = np.empty((tokens, n_u), np.float32)
        for t in range(tokens):
            for j in range(n_u):
                xu[t, j] = x_h[t, i_u[j]]
        peak = _encode_uniform_tiers(xu, n4, group, nearest, table, tier4, tier2, h)
    # sign tier (spectral.rfft_components, lowbit.sign_encode), LANES tokens at a time: the
    # channels gathered one token per lane, their transform, the components transposed back
    # to token-major (tiles in registers), then a sign bit per component and the mean
    # |component| of each group of tokens, summed in token order (groups.group_sum)
    comps, work_re, work_im = scratch(m)
    signal = np.empty((m, ROW), np.float32)
    channels = np.arange(m)
    comps_t = np.empty((LANES, m), np.float32)
    # 2-d: indexed by a flat t * m + k, the sign loop below stayed scalar (5x slower)
    bits = np.empty((tokens, m), np.uint8)
    level = np.empty((n_groups, m), np.float32)
    acc = np.zeros(m, np.float64)
    peak_lanes = np.zeros(LANES, np.float32)
    for t0 in range(0, tokens, LANES):
        n = min(LANES, tokens - t0)
        for lane in range(n):
            for j in range(m):
                signal[j, lane] = x_h[t0 + lane, i_1[j]]
        for j in range(m):
            for lane in range(n):
                peak_lanes[lane] = np.maximum(peak_lanes[lane], abs(signal[j, lane]))
        forward_lanes(signal, channels, n, spectral, work_re, work_im, comps)
        transpose_out(comps, comps_t, m, n, OUT_F32)
        for lane in range(n):
            t = t0 + lane
            for k in range(m):
                c = comps_t[lane, k]
                acc[k] += np.float64(abs(c))
                bits[t, k] = c >= np.float32(0.0)
            g = t // group
            start, stop = g * group, min(tokens, g * group + group)
            if t + 1 == stop:
                for k in range(m):
                    level[g, k] = np.float32(acc[k]) / np.float32(stop - start)
                acc[:] = 0.0
    pack_bits_row(bits.reshape(tokens * m), tokens * m, 1, signs[h])
    k1_max[h] = _log8_codes(level, nearest, k1_scale[h])
    for lane in range(LANES):
        peak = np.maximum(peak, peak_lanes[lane])
    peaks[h] = peak


@njit(**PARALLEL_JIT)
def _encode_keys(
    x, order, n4, n_u, group, nearest, table, spectral, tier4, tier2, signs, k1_scale, k1_max, peaks
):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(x.shape[0]):
        _encode_keys_head(
            h,
            x,
            order,
            n4,
            n_u,
            group,
            nearest,
            table,
            spectral,
            tier4,
            tier2,
            signs,
            k1_scale,
            k1_max,
            peaks,
        )


@njit(**JIT)
def _group_runs(t0, n, group):
    """``[first lane, end lane, group]`` of each run of lanes ``0 .. n`` (tokens ``t0 ..``) whose
    tokens share a group."""
    runs = np.empty((n // group + 2, 3), np.int64)
    count = 0
    start = t0
    while start < t0 + n:
        g = start // group
        stop = min(t0 + n, (g + 1) * group)
        runs[count, 0], runs[count, 1], runs[count, 2] = start - t0, stop - t0, g
        count += 1
        start = stop
    return runs[:count]


@njit(**JIT)
def _sign_components(bits_t, levels, runs, comps):
    """Sign-tier components of a block's lanes into ``comps [m, lanes]``: ``+level`` where the
    bit is 1, ``-level`` where it is 0 (``lowbit.sign_decode``: exactly the reference's
    ``(bit * 2 - 1) * level``); ``bits_t [m, lanes]``, ``levels [groups, m]``."""
    for r in range(runs.shape[0]):
        a, b, g = runs[r, 0], runs[r, 1], runs[r, 2]
        for k in range(comps.shape[0]):
            level = levels[g, k]
            c, bit = comps[k, a:b], bits_t[k, a:b]
            for i in range(b - a):
                c[i] = level if bit[i] else -level


@njit(**JIT)
def _uniform_channels(codes_t, scale, zero, hm, bits, table, channels, runs, chan):
    """One uniform key tier of a block's lanes into ``chan``'s rows ``channels``: ``(code +
    zero point) * step`` (``uniform.decode_log8_minmax``); ``codes_t [count, lanes]``, ``scale``
    and ``zero`` ``[count, groups]``."""
    units = np.float32(_zero_units(bits))
    for r in range(runs.shape[0]):
        a, b, g = runs[r, 0], runs[r, 1], runs[r, 2]
        for j in range(channels.shape[0]):
            step = table[scale[j, g]] * hm
            offset = np.float32(zero[j, g]) / units
            row, q = chan[channels[j], a:b], codes_t[j, a:b]
            for i in range(b - a):
                row[i] = (np.float32(q[i]) + offset) * step


@njit(**JIT)
def _decode_keys_head(
    h, idx4, idx2, tier4, tier2, idx1, signs, k1_scale, k1_max, group, table, spectral, out, mode
):
    heads, tokens, head_dim = out.shape
    m = idx1.shape[1]
    n4, n2 = idx4.shape[1], idx2.shape[1]
    # codes one byte each, token-major as stored, then room for the transposes' whole tiles
    tail = TILE * max(n4, n2, m) + TILE
    q4 = np.empty(tokens * n4 + tail, np.uint8)
    q2 = np.empty(tokens * n2 + tail, np.uint8)
    bits = np.empty(tokens * m + tail, np.uint8)
    q4[tokens * n4 :] = 0
    q2[tokens * n2 :] = 0
    bits[tokens * m :] = 0
    unpack_bits_row(tier4[0][h], tokens * n4, 4, q4)
    unpack_bits_row(tier2[0][h], tokens * n2, 2, q2)
    unpack_bits_row(signs[h], tokens * m, 1, bits)
    hm1 = bf16_value(k1_max[h])
    levels = np.empty((k1_scale.shape[2], m), np.float32)
    for g in range(levels.shape[0]):
        for k in range(m):
            levels[g, k] = table[k1_scale[h, k, g]] * hm1
    # blocks of LANES tokens, one token per lane: codes transposed to [channel, lane], every
    # tier decoded into its channels' rows of ``chan``, then ``chan`` transposed into the
    # output's token rows (converting on the way)
    comps, work_re, work_im = scratch(m)
    chan = np.empty((head_dim, ROW), np.float32)
    q4_t = np.empty((padded(n4), LANES), np.uint8)
    q2_t = np.empty((padded(n2), LANES), np.uint8)
    bits_t = np.empty((padded(m), LANES), np.uint8)
    for t0 in range(0, tokens, LANES):
        n = min(LANES, tokens - t0)
        runs = _group_runs(t0, n, group)
        transpose_u8(bits, t0 * m, m, n, m, bits_t)
        _sign_components(bits_t, levels, runs, comps)
        inverse_lanes(comps, n, spectral, work_re, work_im, chan, idx1[h])
        transpose_u8(q4, t0 * n4, n4, n, n4, q4_t)
        _uniform_channels(
            q4_t, tier4[1][h], tier4[2][h], bf16_value(tier4[3][h]), 4, table, idx4[h], runs, chan
        )
        transpose_u8(q2, t0 * n2, n2, n, n2, q2_t)
        _uniform_channels(
            q2_t, tier2[1][h], tier2[2][h], bf16_value(tier2[3][h]), 2, table, idx2[h], runs, chan
        )
        transpose_out(chan, out[h, t0 : t0 + n], head_dim, n, mode)


@njit(**PARALLEL_JIT)
def _decode_keys(idx4, idx2, tier4, tier2, idx1, signs, k1_scale, k1_max, group, table, spectral, out, mode):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(idx4.shape[0]):
        _decode_keys_head(
            h, idx4, idx2, tier4, tier2, idx1, signs, k1_scale, k1_max, group, table, spectral, out, mode
        )


# id of a frozen tier tensor -> (a weak reference to it, its channel indices per tier): the
# argsorts run once per layer, not per block; the weak reference tells a reused id apart
_CHANNELS: dict[int, tuple[weakref.ref, tuple[np.ndarray, ...]]] = {}


def layer_channels(tiers: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(4-bit, 2-bit, sign-tier) channel indices ``[heads, count]`` of a layer's frozen tiers,
    then all three side by side in that order; computed once per tiers tensor."""
    key = id(tiers)
    cached = _CHANNELS.get(key)
    if cached is None or cached[0]() is not tiers:
        channels = tuple(tier_indices(tiers, tier).numpy().astype(np.uint32) for tier in (2, 1, 0))
        channels += (np.ascontiguousarray(np.concatenate(channels, axis=1)),)
        cached = _CHANNELS[key] = (weakref.ref(tiers, lambda _: _CHANNELS.pop(key, None)), channels)
    return cached[1]


def key_channels(tiers: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(4-bit, 2-bit, sign-tier) channel indices ``[heads, count]`` of a layer's frozen tiers."""
    return layer_channels(tiers)[:3]


_TIER_FIELDS = ("codes", "scale", "zero", "scale_max")
# each uniform key tier's tensor names, in the order the kernels take them
_TIER_NAMES = {bits: tuple(f"k{bits}.{part}" for part in _TIER_FIELDS) for bits in (4, 2)}


def _new_tier(heads: int, tokens: int, count: int, bits: int, n_groups: int):
    """A uniform key tier's tensors by name, and their numpy views in the kernels' order."""
    shapes = (
        (heads, packed_length(tokens * count, bits)),
        (heads, count, n_groups),
        (heads, count, n_groups),
        (heads,),
    )
    dtypes = (torch.uint8, torch.uint8, torch.int8, torch.bfloat16)
    pairs = [new_output(shape, dtype) for shape, dtype in zip(shapes, dtypes, strict=True)]
    return dict(zip(_TIER_NAMES[bits], (t for t, _ in pairs), strict=True)), tuple(a for _, a in pairs)


def encode_keys(x: torch.Tensor, codec: VidKVCodec, layer: int) -> dict[str, torch.Tensor]:
    """``VidKVCodec._encode_keys``, values checked (``check_values``) from the kernel's own peak
    ``|x|``; calibrates the layer on its first block, like the reference, after checking it."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    codec.ensure_layer_state(x, "key", layer, check=True)  # checked before the state freezes on it
    idx4, idx2, idx1, order = layer_channels(codec._tiers[layer])
    group = balanced_group(tokens, codec.group_size)
    n_groups = num_groups(tokens, group)
    m = idx1.shape[1]
    tiers = {
        bits: _new_tier(heads, tokens, idx.shape[1], bits, n_groups) for bits, idx in ((4, idx4), (2, idx2))
    }
    out = {
        name: t for bits, idx in ((4, idx4), (2, idx2)) if idx.shape[1] for name, t in tiers[bits][0].items()
    }
    sign_fields = (
        ("k1.signs", (heads, packed_length(tokens * m, 1)), torch.uint8),
        ("k1.scale", (heads, m, n_groups), torch.uint8),
        ("k1.scale_max", (heads,), torch.bfloat16),
    )
    arrays = []
    for name, shape, dtype in sign_fields:
        out[name], array = new_output(shape, dtype)
        arrays.append(array)
    peaks = np.empty(heads, np.float32)
    log8, nearest = tables()
    match_torch_threads()
    _encode_keys(
        x.numpy(),
        order,
        idx4.shape[1],
        idx4.shape[1] + idx2.shape[1],
        group,
        nearest,
        log8,
        spectral_tables(m),
        tiers[4][1],
        tiers[2][1],
        *arrays,
        peaks,
    )
    codec.check_values_within([x], float(peaks.max()))
    return out


def _key_tiers(codec: VidKVCodec, layer: int, heads: int, head_dim: int) -> torch.Tensor:
    tiers = codec._layer_tiers(layer, heads, head_dim)
    if tiers is None:
        raise QuantError(
            f"{codec.name}: no key channel tiers for layer {layer}; "
            "load them with load_shared_state(layer, ...) before decoding"
        )
    return tiers


def _check_groups(codec: VidKVCodec, got: int, length: int, group: int) -> None:
    if got != num_groups(length, group):
        raise QuantError(
            f"{codec.name}: encoded with another group_size than {codec.group_size}; "
            "decode with a codec built with the encoding options"
        )


def decode_keys_into(enc: EncodedTensor, codec: VidKVCodec, out: torch.Tensor, mode: int) -> None:
    """``VidKVCodec._decode_keys`` written into ``out``, every tier in one pass per head."""
    heads, tokens, head_dim = enc.shape
    idx4, idx2, idx1 = key_channels(_key_tiers(codec, enc.layer, heads, head_dim))
    a = numpy_arrays(enc.tensors)
    group = balanced_group(tokens, codec.group_size)
    _check_groups(codec, a["k1.scale"].shape[-1], tokens, group)
    m = idx1.shape[1]
    tiers = {}
    for bits, idx in ((4, idx4), (2, idx2)):
        names = _TIER_NAMES[bits]
        if not idx.shape[1]:  # the layer has no such tier: empty stand-ins
            tiers[bits] = _new_tier(heads, 0, 0, bits, num_groups(tokens, group))[1]
        elif all(name in a for name in names):
            tiers[bits] = tuple(a[name] for name in names)
        else:
            raise QuantError(f"{codec.name}: key block lacks the {bits}-bit tier the layer's tiers call for")
    match_torch_threads()
    _decode_keys(
        idx4,
        idx2,
        tiers[4],
        tiers[2],
        idx1,
        a["k1.signs"],
        a["k1.scale"],
        a["k1.scale_max"],
        group,
        tables()[0],
        spectral_tables(m),
        as_numpy_out(out),
        mode,
    )


# ----- values ----------------------------------------------------------------------------


@njit(**JIT)
def _token_split(flags):
    """(salient tokens, the others), each ascending."""
    n_sal = 0
    for f in flags:
        n_sal += f
    sal = np.empty(n_sal, np.int64)
    rest = np.empty(flags.shape[0] - n_sal, np.int64)
    i = j = 0
    for t in range(flags.shape[0]):
        if flags[t]:
            sal[i] = t
            i += 1
        else:
            rest[j] = t
            j += 1
    return sal, rest


@njit(**JIT)
def _token_energy(x_h, energy):
    """``selection.token_energy`` of one head's tokens ``[tokens, head_dim]`` into ``energy``: the
    same float32 products and sums in the same order; returns the largest (nan if one is)."""
    tokens, head_dim = x_h.shape
    s = np.empty(head_dim, np.float32)
    top = np.float32(0.0)
    for t in range(tokens):
        for d in range(head_dim):
            s[d] = x_h[t, d] * x_h[t, d]
        n = head_dim
        while n > 1:
            half = n // 2
            for i in range(half):
                s[i] = s[i] + s[half + i]
            if n % 2:
                s[half] = s[2 * half]
            n = half + n % 2
        energy[t] = s[0]
        top = np.maximum(top, s[0])
    return top


@njit(**JIT)
def _salient_flags(energy, count, flags):
    """``selection.salient_tokens`` of one head from its energies: flags (1) on the ``count``
    largest, ties to the earlier token (its stable argsort) -- a partition, not a sort."""
    tokens = energy.shape[0]
    flags[:] = 0
    if count == 0:
        return
    kth = np.partition(energy.copy(), tokens - count)[tokens - count]  # the count-th largest
    ties = count  # then how many of the tokens equal to it still get in, earliest first
    for t in range(tokens):
        ties -= energy[t] > kth
    for t in range(tokens):
        if energy[t] > kth:
            flags[t] = 1
        elif energy[t] == kth and ties > 0:
            flags[t] = 1
            ties -= 1


@njit(**JIT)
def _encode_values_head(
    h,
    x,
    n_sal,
    threshold,
    group,
    sal_group,
    nearest,
    table,
    mask,
    tern,
    tern_scale,
    tern_max,
    sal_codes,
    sal_scale,
    sal_zero,
    sal_max,
    peaks,
):
    """Head ``h``'s value fields, and into ``peaks[h]`` its largest token energy: if that is nan
    or inf the head stops there (the token split needs ordered energies) and the caller, which
    checks the input from it, raises."""
    heads, tokens, head_dim = x.shape
    n_groups = tern_scale.shape[2]
    x_h = x[h]
    energy = np.empty(tokens, np.float32)
    peaks[h] = _token_energy(x_h, energy)
    if not peaks[h] < np.inf:
        return
    flags = np.empty(tokens, np.uint8)
    _salient_flags(energy, n_sal, flags)
    sal, rest = _token_split(flags)
    pack_bits_row(flags, tokens, 1, mask[h])
    # the others: ternary per channel over groups of rest tokens (lowbit.ternary_encode,
    # ternary_ls_level); codes t + 1 packed token-major as base-3 trits
    n_rest = rest.shape[0]
    q = np.empty(n_rest * head_dim, np.uint8)
    level = np.empty((n_groups, head_dim), np.float32)
    acc = np.empty(head_dim, np.float64)
    thr = np.empty(head_dim, np.float32)
    count = np.empty(head_dim, np.int32)  # int32 lanes: twice as many per vector as int64
    for g in range(n_groups):
        start, stop = g * group, min(n_rest, g * group + group)
        acc[:] = 0.0
        for r in range(start, stop):
            x_r = x_h[rest[r]]
            for d in range(head_dim):
                acc[d] += np.float64(abs(x_r[d]))
        for d in range(head_dim):
            thr[d] = (np.float32(acc[d]) / np.float32(stop - start)) * threshold
        acc[:] = 0.0
        count[:] = 0
        for r in range(start, stop):
            x_r, q_r = x_h[rest[r]], q[r * head_dim : (r + 1) * head_dim]
            for d in range(head_dim):
                v, t = x_r[d], thr[d]
                up, down = v > t, v < -t  # two flags, not a code compared later: 4x faster
                q_r[d] = 2 if up else (0 if down else 1)
                nonzero = up or down
                acc[d] += np.float64(abs(v)) if nonzero else 0.0
                count[d] += np.int32(1) if nonzero else np.int32(0)
        for d in range(head_dim):
            level[g, d] = np.float32(acc[d]) / np.float32(max(count[d], 1))
    pack_trits_row(q, n_rest * head_dim, tern[h])
    tern_max[h] = _log8_codes(level, nearest, tern_scale[h])
    # salient tokens: 2 bits per token in groups of channels
    sal_max[h] = _encode_rows(x_h, sal, sal_group, 2, nearest, table, sal_codes[h], sal_scale[h], sal_zero[h])


@njit(**PARALLEL_JIT)
def _encode_values(
    x,
    n_sal,
    threshold,
    group,
    sal_group,
    nearest,
    table,
    mask,
    tern,
    tern_scale,
    tern_max,
    sal_codes,
    sal_scale,
    sal_zero,
    sal_max,
    peaks,
):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(x.shape[0]):
        _encode_values_head(
            h,
            x,
            n_sal,
            threshold,
            group,
            sal_group,
            nearest,
            table,
            mask,
            tern,
            tern_scale,
            tern_max,
            sal_codes,
            sal_scale,
            sal_zero,
            sal_max,
            peaks,
        )


@njit(**JIT)
def _decode_values_head(
    h,
    mask,
    tern,
    tern_scale,
    tern_max,
    sal_codes,
    sal_scale,
    sal_zero,
    sal_max,
    group,
    sal_group,
    table,
    trits,
    out,
    mode,
):
    heads, tokens, head_dim = out.shape
    units = np.float32(_zero_units(2))
    flags = np.empty(tokens, np.uint8)
    unpack_bits_row(mask[h], tokens, 1, flags)
    sal, rest = _token_split(flags)
    dest = out[h]
    row = np.empty(head_dim, np.float32)
    level = np.empty(head_dim, np.float32)
    # the others: trit - 1 times the channel's level for the token's group
    n_rest = rest.shape[0]
    q = np.empty(n_rest * head_dim, np.uint8)
    unpack_trits_row(tern[h], n_rest * head_dim, trits, q)
    codes = q.reshape(n_rest, head_dim)
    hm = bf16_value(tern_max[h])
    # 16-bit outputs: a trit takes 3 values, so each group's 3 possible outputs per channel
    # are made once, already converted, and each element picks one with bit masks (the same
    # product, converted the same way: the same bits; a select or a branch per element kept
    # the loop scalar, 6x slower)
    choices = np.empty((1, 3, head_dim), np.uint16)  # 3-d: emit_row's [head, token, channel]
    minus, zero, plus = choices[0, 0], choices[0, 1], choices[0, 2]
    for g in range(-(-n_rest // group)):
        for d in range(head_dim):
            level[d] = table[tern_scale[h, d, g]] * hm
        if mode != OUT_F32:
            for trit in range(3):
                for d in range(head_dim):
                    row[d] = np.float32(trit - 1) * level[d]
                emit_row(row, choices, 0, trit, mode)
        for r in range(g * group, min(n_rest, g * group + group)):
            t = rest[r]
            if mode == OUT_F32:
                for d in range(head_dim):
                    dest[t, d] = np.float32(np.int32(codes[r, d]) - np.int32(1)) * level[d]
            else:
                for d in range(head_dim):
                    c = codes[r, d]
                    is_minus = np.uint16(0) - np.uint16(c == 0)
                    is_plus = np.uint16(0) - np.uint16(c == 2)
                    is_zero = ~(is_minus | is_plus)
                    dest[t, d] = (minus[d] & is_minus) | (zero[d] & is_zero) | (plus[d] & is_plus)
    # salient tokens: 2-bit codes in groups of channels
    n_sal = sal.shape[0]
    q2 = np.empty(n_sal * head_dim, np.uint8)
    unpack_bits_row(sal_codes[h], n_sal * head_dim, 2, q2)
    codes = q2.reshape(n_sal, head_dim)
    hm = bf16_value(sal_max[h])
    step, offset = level, np.empty(head_dim, np.float32)  # per channel: its group's
    for r in range(n_sal):
        for g in range(sal_scale.shape[2]):
            step[g * sal_group : g * sal_group + sal_group] = table[sal_scale[h, r, g]] * hm
            offset[g * sal_group : g * sal_group + sal_group] = np.float32(sal_zero[h, r, g]) / units
        # one loop over the whole row (a loop per group of channels: 3x slower)
        for d in range(head_dim):
            row[d] = (np.float32(codes[r, d]) + offset[d]) * step[d]
        emit_row(row, out, h, sal[r], mode)


@njit(**PARALLEL_JIT)
def _decode_values(
    mask,
    tern,
    tern_scale,
    tern_max,
    sal_codes,
    sal_scale,
    sal_zero,
    sal_max,
    group,
    sal_group,
    table,
    trits,
    out,
    mode,
):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(mask.shape[0]):
        _decode_values_head(
            h,
            mask,
            tern,
            tern_scale,
            tern_max,
            sal_codes,
            sal_scale,
            sal_zero,
            sal_max,
            group,
            sal_group,
            table,
            trits,
            out,
            mode,
        )


def encode_values(x: torch.Tensor, codec: VidKVCodec, layer: int) -> dict[str, torch.Tensor]:
    """``VidKVCodec._encode_values``, values checked (``check_values``) from the token energies
    that choose the salient tokens; freezes the layer's value profile on its first block."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    codec.ensure_layer_state(x, "value", layer, check=True)
    n_sal = salient_count(tokens, codec.salient_fraction)
    n_rest = tokens - n_sal
    group = balanced_group(n_rest, codec.group_size)
    sal_group = balanced_group(head_dim, codec.group_size)
    sal_groups = num_groups(head_dim, sal_group)
    fields = {
        "salient": new_output((heads, packed_length(tokens, 1)), torch.uint8),
        "tern.codes": new_output((heads, packed_length(n_rest * head_dim, None)), torch.uint8),
        "tern.scale": new_output((heads, head_dim, num_groups(n_rest, group)), torch.uint8),
        "tern.scale_max": new_output((heads,), torch.bfloat16),
        "sal.codes": new_output((heads, packed_length(n_sal * head_dim, 2)), torch.uint8),
        "sal.scale": new_output((heads, n_sal, sal_groups), torch.uint8),
        "sal.zero": new_output((heads, n_sal, sal_groups), torch.int8),
        "sal.scale_max": new_output((heads,), torch.bfloat16),
    }
    peaks = np.empty(heads, np.float32)
    log8, nearest = tables()
    match_torch_threads()
    _encode_values(
        x.numpy(),
        n_sal,
        np.float32(codec.ternary_threshold),
        group,
        sal_group,
        nearest,
        log8,
        *(array for _, array in fields.values()),
        peaks,
    )
    # a token's energy bounds its |x|^2 and is nan or inf where it holds one
    codec.check_values_within([x], math.sqrt(peaks.max()))
    return {name: tensor for name, (tensor, _) in fields.items()}


_VALUE_NAMES = (
    "salient",
    "tern.codes",
    "tern.scale",
    "tern.scale_max",
    "sal.codes",
    "sal.scale",
    "sal.zero",
    "sal.scale_max",
)


def decode_values_into(enc: EncodedTensor, codec: VidKVCodec, out: torch.Tensor, mode: int) -> None:
    """``VidKVCodec._decode_values`` written into ``out``."""
    heads, tokens, head_dim = enc.shape
    a = numpy_arrays(enc.tensors)
    n_sal = a["sal.scale"].shape[1]
    group = balanced_group(tokens - n_sal, codec.group_size)
    _check_groups(codec, a["tern.scale"].shape[-1], tokens - n_sal, group)
    match_torch_threads()
    _decode_values(
        *(a[name] for name in _VALUE_NAMES),
        group,
        balanced_group(head_dim, codec.group_size),
        tables()[0],
        trit_table(),
        as_numpy_out(out),
        mode,
    )
