"""``vidkv``'s compact layout (blocks of fewer tokens than ``group_size``) on a CPU, by numba.

Reference: ``streamvlm.quant.vidkv_compact``; same bytes, same floats (rules in
``cpu_common``; the sign tier's transform is ``spectral_cpu``'s, as in ``vidkv_cpu``).

Why kernels for blocks this small: every block of the tiny model (16 tokens) and every pruned
block is compact, and the reference spends ~40 torch operations on each tensor, 0.3-0.8 ms
whatever its size: a 2-layer block took ~3 ms to encode, more than the model's own forward,
which made vidkv's host and disk tiers double ``bench stream``'s encode time per frame.
A call codes one tensor, head after head on one thread (under ``group_size`` tokens there
is too little work to share out). What stays in torch: the layer's channel tiers and
profiles (``VidKVCodec.ensure_layer_state``, once per layer) and decoding the profiles
(``VidKVCodec.profile``, once per layer and device).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numba import njit

from ..quant import vidkv_compact as compact
from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import num_groups
from ..quant.packing import packed_length
from ..quant.spectral import spectral_tables
from ..quant.vidkv import VidKVCodec
from .cpu_common import (
    JIT,
    as_numpy_out,
    emit_row,
    new_output,
    numpy_arrays,
    pack_bits_row,
    pack_trits_row,
    trit_table,
    unpack_bits_row,
    unpack_trits_row,
)
from .spectral_cpu import LANES, forward_lanes, inverse_lanes, scratch
from .vidkv_cpu import key_channels, layer_channels

P = compact.PREFIX
_UNIT = np.float32(compact.OFFSET_UNIT)
_HALF = 1 << (compact.OFFSET_BITS - 1)
_ZERO_UNITS = np.float32(compact.ZERO_UNITS)


@functools.lru_cache(maxsize=1)
def _gain_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decoded gains float32 [256], round-up bounds, nearest bounds (float64)): the reference's."""
    return (
        compact.GAIN_TABLE.cpu.numpy(),
        compact.GAIN_BOUNDS[True].cpu.numpy(),
        compact.GAIN_BOUNDS[False].cpu.numpy(),
    )


# ----- shared steps ----------------------------------------------------------------------


@njit(**JIT)
def _gain_code(g, bounds, round_up):
    """``vidkv_compact.encode_gain`` of one ratio: 1 + how many ``bounds`` lie below ``g``
    (``round_up``) or at or below it; 0 unless ``g > 0``."""
    if not g > np.float32(0.0):
        return 0
    v = np.float64(g)
    lo, hi = 0, bounds.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if bounds[mid] < v or (not round_up and bounds[mid] == v):
            lo = mid + 1
        else:
            hi = mid
    return lo + 1


@njit(**JIT)
def _encode_offsets(x_h, prof_h, codes, at, off):
    """``vidkv_compact.encode_offsets`` of one head: per channel, the mean over tokens (summed in
    token order in float64, rounded once) in quarter profiles, 4-bit codes into ``codes[at:]``
    and the decoded offsets into ``off``."""
    tokens, head_dim = x_h.shape
    for d in range(head_dim):
        acc = 0.0
        for t in range(tokens):
            acc += np.float64(x_h[t, d])
        mean = np.float32(acc) / np.float32(tokens)
        c = min(max(np.rint(mean / (prof_h[d] * _UNIT)), np.float32(-_HALF)), np.float32(_HALF - 1))
        codes[at + d] = np.uint8(c + np.float32(_HALF))
        off[d] = (c * prof_h[d]) * _UNIT


@njit(**JIT)
def _decode_offsets(codes, at, prof_h, off):
    for d in range(off.shape[0]):
        off[d] = ((np.float32(codes[at + d]) - np.float32(_HALF)) * prof_h[d]) * _UNIT


# ----- keys ------------------------------------------------------------------------------


@njit(**JIT)
def _encode_uniform_runs(xu, n4, run, step_h, zero_h, gain_values, up_bounds, q4, q2, at4, at2):
    """The 4-bit and 2-bit tiers of one head from its profile-normalised channels ``xu``
    ``[tokens, n4 + n2]``: one range per run of tokens over both tiers (step code and int8
    zero point in quarter 2-bit steps), codes token-major into ``q4[at4:]`` and ``q2[at2:]``."""
    tokens, n_u = xu.shape
    n2 = n_u - n4
    w4_levels, w2_levels = np.float32(15.0), np.float32(3.0)
    for r in range(step_h.shape[0]):
        t0, t1 = r * run, min(tokens, r * run + run)
        lo, hi = np.float32(np.inf), np.float32(-np.inf)
        for t in range(t0, t1):
            for j in range(n_u):
                lo = np.minimum(lo, xu[t, j])
                hi = np.maximum(hi, xu[t, j])
        raw = np.maximum((hi - lo) / np.float32(2.75), (abs(lo) * _ZERO_UNITS) / np.float32(127.0))
        code = _gain_code(raw, up_bounds, True)
        s = gain_values[code]
        safe = s if s > np.float32(0.0) else np.float32(1.0)
        z = min(max(np.floor((lo / safe) * _ZERO_UNITS), np.float32(-128.0)), np.float32(127.0))
        step_h[r] = code
        zero_h[r] = np.int8(z)
        low = (z / _ZERO_UNITS) * s
        w4 = (safe * np.float32(3.0)) / w4_levels
        w2 = (safe * np.float32(3.0)) / w2_levels
        for t in range(t0, t1):
            for j in range(n4):
                v = np.rint((xu[t, j] - low) / w4)
                q4[at4 + t * n4 + j] = np.uint8(min(max(v, np.float32(0.0)), w4_levels))
            for j in range(n2):
                v = np.rint((xu[t, n4 + j] - low) / w2)
                q2[at2 + t * n2 + j] = np.uint8(min(max(v, np.float32(0.0)), w2_levels))


@njit(**JIT)
def _encode_keys(
    x,
    prof,
    comp_prof,
    idx_u,
    n4,
    idx1,
    run,
    with_offsets,
    gain_values,
    up_bounds,
    near_bounds,
    spectral,
    fields,
):
    """Every compact key field of ``x`` ``[heads, tokens, head_dim]`` into ``fields`` (offset,
    k4, k2, step, zero, k1, gain: packed rows, step and zero ``[heads, runs]``); returns the
    largest ``|x|`` (nan if one is nan: the caller checks the input from it)."""
    offset_row, k4_row, k2_row, step, zero, k1_row, gain = fields
    heads, tokens, head_dim = x.shape
    n_u, m = idx_u.shape[1], idx1.shape[1]
    n2 = n_u - n4
    off_codes = np.empty(heads * head_dim, np.uint8)
    q4 = np.empty(heads * tokens * n4, np.uint8)
    q2 = np.empty(heads * tokens * n2, np.uint8)
    bits = np.empty(heads * tokens * m, np.uint8)
    off = np.zeros(head_dim, np.float32)
    xo = np.empty((tokens, head_dim), np.float32)
    xu = np.empty((tokens, n_u), np.float32)
    comps, work_re, work_im = scratch(m)
    signal = np.empty((m, comps.shape[1]), np.float32)
    channels = np.arange(m)
    peak = np.float32(0.0)
    acc = 0.0  # sum of |sign-tier components| over the whole tensor, in its element order
    for h in range(heads):
        x_h = x[h]
        if with_offsets:
            _encode_offsets(x_h, prof[h], off_codes, h * head_dim, off)
        for t in range(tokens):
            for d in range(head_dim):
                peak = np.maximum(peak, abs(x_h[t, d]))
                xo[t, d] = x_h[t, d] - off[d]  # - 0.0 without offsets: x itself, -0.0 included
        if n_u:
            for t in range(tokens):
                for j in range(n_u):
                    c = idx_u[h, j]
                    xu[t, j] = xo[t, c] / prof[h, c]
            _encode_uniform_runs(
                xu,
                n4,
                run,
                step[h],
                zero[h],
                gain_values,
                up_bounds,
                q4,
                q2,
                h * tokens * n4,
                h * tokens * n2,
            )
        for t0 in range(0, tokens, LANES):
            n = min(LANES, tokens - t0)
            for lane in range(n):
                for j in range(m):
                    signal[j, lane] = xo[t0 + lane, idx1[h, j]]
            forward_lanes(signal, channels, n, spectral, work_re, work_im, comps)
            for lane in range(n):
                at = (h * tokens + t0 + lane) * m
                for k in range(m):
                    c = comps[k, lane] / comp_prof[h, k]
                    acc += np.float64(abs(c))
                    bits[at + k] = c >= np.float32(0.0)
    if with_offsets:
        pack_bits_row(off_codes, heads * head_dim, 4, offset_row[0])
    if n4:
        pack_bits_row(q4, heads * tokens * n4, 4, k4_row[0])
    if n2:
        pack_bits_row(q2, heads * tokens * n2, 2, k2_row[0])
    pack_bits_row(bits, heads * tokens * m, 1, k1_row[0])
    level = np.float32(acc) / np.float32(heads * tokens * m)
    gain[0] = _gain_code(level, near_bounds, False)
    return peak


@njit(**JIT)
def _decode_keys(
    fields, with_offsets, prof, comp_prof, idx4, idx2, idx1, run, gain_values, spectral, out, mode
):
    """Inverse of ``_encode_keys`` into ``out`` ``[heads, tokens, head_dim]`` (mode: ``cpu_common.OUT_*``)."""
    offset_row, k4_row, k2_row, step, zero, k1_row, gain = fields
    heads, tokens, head_dim = out.shape
    n4, n2, m = idx4.shape[1], idx2.shape[1], idx1.shape[1]
    off_codes = np.empty(heads * head_dim, np.uint8)
    q4 = np.empty(heads * tokens * n4, np.uint8)
    q2 = np.empty(heads * tokens * n2, np.uint8)
    bits = np.empty(heads * tokens * m, np.uint8)
    if with_offsets:
        unpack_bits_row(offset_row[0], heads * head_dim, 4, off_codes)
    unpack_bits_row(k4_row[0], heads * tokens * n4, 4, q4)
    unpack_bits_row(k2_row[0], heads * tokens * n2, 2, q2)
    unpack_bits_row(k1_row[0], heads * tokens * m, 1, bits)
    sign_level = gain_values[gain[0]]
    off = np.zeros(head_dim, np.float32)
    chan = np.empty((head_dim, tokens), np.float32)  # channel rows, one token per column
    comps, work_re, work_im = scratch(m)
    vals = np.empty(head_dim, np.float32)
    for h in range(heads):
        prof_h = prof[h]
        for r in range(step.shape[1] if n4 + n2 else 0):
            s = gain_values[step[h, r]]
            low = (np.float32(zero[h, r]) / _ZERO_UNITS) * s
            w4 = (s * np.float32(3.0)) / np.float32(15.0)
            w2 = (s * np.float32(3.0)) / np.float32(3.0)
            for t in range(r * run, min(tokens, r * run + run)):
                at4, at2 = (h * tokens + t) * n4, (h * tokens + t) * n2
                for j in range(n4):
                    c = idx4[h, j]
                    chan[c, t] = (np.float32(q4[at4 + j]) * w4 + low) * prof_h[c]
                for j in range(n2):
                    c = idx2[h, j]
                    chan[c, t] = (np.float32(q2[at2 + j]) * w2 + low) * prof_h[c]
        for t0 in range(0, tokens, LANES):
            n = min(LANES, tokens - t0)
            for k in range(m):
                for lane in range(n):
                    sign = np.float32(bits[(h * tokens + t0 + lane) * m + k]) * np.float32(2.0) - np.float32(
                        1.0
                    )
                    comps[k, lane] = (sign * sign_level) * comp_prof[h, k]
            inverse_lanes(comps, n, spectral, work_re, work_im, chan[:, t0:], idx1[h])
        if with_offsets:
            _decode_offsets(off_codes, h * head_dim, prof_h, off)
        for t in range(tokens):
            for d in range(head_dim):
                vals[d] = chan[d, t] + off[d] if with_offsets else chan[d, t]
            emit_row(vals, out, h, t, mode)


# ----- values ----------------------------------------------------------------------------


@njit(**JIT)
def _encode_values(x, prof, with_offsets, threshold, near_bounds, offset_row, tern_row, gain):
    """Every compact value field of ``x`` (ternary codes against the profile, one least-squares
    level); returns the largest ``|x|`` (nan if one is nan)."""
    heads, tokens, head_dim = x.shape
    n = heads * tokens * head_dim
    off_codes = np.empty(heads * head_dim, np.uint8)
    off = np.zeros(head_dim, np.float32)
    xn = np.empty(n, np.float32)
    peak = np.float32(0.0)
    acc = 0.0
    for h in range(heads):
        x_h = x[h]
        if with_offsets:
            _encode_offsets(x_h, prof[h], off_codes, h * head_dim, off)
        for t in range(tokens):
            at = (h * tokens + t) * head_dim
            for d in range(head_dim):
                v = x_h[t, d]
                peak = np.maximum(peak, abs(v))
                xn[at + d] = (v - off[d]) / prof[h, d]
                acc += np.float64(abs(xn[at + d]))
    gamma = np.float32(acc) / np.float32(n)
    thr = threshold * gamma
    codes = np.empty(n, np.uint8)
    acc = 0.0
    count = 0
    for i in range(n):
        v = xn[i]
        if v > thr:
            codes[i] = 2
        elif v < -thr:
            codes[i] = 0
        else:
            codes[i] = 1
            continue
        acc += np.float64(abs(v))
        count += 1
    if with_offsets:
        pack_bits_row(off_codes, heads * head_dim, 4, offset_row[0])
    pack_trits_row(codes, n, tern_row[0])
    gain[0] = _gain_code(np.float32(acc) / np.float32(max(count, 1)), near_bounds, False)
    return peak


@njit(**JIT)
def _decode_values(offset_row, tern_row, gain, with_offsets, prof, gain_values, trits, out, mode):
    heads, tokens, head_dim = out.shape
    codes = np.empty(heads * tokens * head_dim, np.uint8)
    unpack_trits_row(tern_row[0], codes.shape[0], trits, codes)
    off_codes = np.empty(heads * head_dim, np.uint8)
    if with_offsets:
        unpack_bits_row(offset_row[0], heads * head_dim, 4, off_codes)
    level = gain_values[gain[0]]
    off = np.zeros(head_dim, np.float32)
    vals = np.empty(head_dim, np.float32)
    for h in range(heads):
        prof_h = prof[h]
        if with_offsets:
            _decode_offsets(off_codes, h * head_dim, prof_h, off)
        for t in range(tokens):
            at = (h * tokens + t) * head_dim
            for d in range(head_dim):
                v = ((np.float32(codes[at + d]) - np.float32(1.0)) * level) * prof_h[d]
                vals[d] = v + off[d] if with_offsets else v
            emit_row(vals, out, h, t, mode)


# ----- entry points ----------------------------------------------------------------------


def _row(name: str, length: int, fields: dict) -> np.ndarray:
    """A new packed field ``[1, length]`` named ``name`` in ``fields``; its numpy view."""
    fields[name], array = new_output((1, length), torch.uint8)
    return array


_NO_ROW = np.zeros((1, 0), np.uint8)  # a field the block does not have


def encode_keys(x: torch.Tensor, codec: VidKVCodec, layer: int) -> dict[str, torch.Tensor]:
    """``vidkv_compact.encode_keys`` of ``x``, values checked from the kernel's peak ``|x|``;
    freezes the layer's state on its first block, like the reference, after checking it."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    codec.ensure_layer_state(x, "key", layer, check=True)
    idx4, idx2, idx1, order = layer_channels(codec._tiers[layer])
    prof = codec.profile("key", layer, x.shape, torch.device("cpu")).numpy()
    n4, n_u, m = idx4.shape[1], idx4.shape[1] + idx2.shape[1], idx1.shape[1]
    run = compact.run_tokens(tokens, n_u, codec.group_size)
    with_offsets = compact.uses_offsets(tokens, "key")
    out: dict[str, torch.Tensor] = {}
    offset_row = _row(f"{P}offset", packed_length(heads * head_dim, 4), out) if with_offsets else _NO_ROW
    k4_row = _row(f"{P}k4", packed_length(heads * tokens * n4, 4), out) if n4 else _NO_ROW
    k2_row = _row(f"{P}k2", packed_length(heads * tokens * (n_u - n4), 2), out) if n_u - n4 else _NO_ROW
    if n_u:
        out[f"{P}step"], step = new_output((heads, num_groups(tokens, run)), torch.uint8)
        out[f"{P}zero"], zero = new_output((heads, num_groups(tokens, run)), torch.int8)
    else:  # no uniform tiers: no step or zero fields either (as the reference)
        step, zero = np.zeros((heads, 0), np.uint8), np.zeros((heads, 0), np.int8)
    k1_row = _row(f"{P}k1", packed_length(heads * tokens * m, 1), out)
    out[f"{P}gain"], gain = new_output((1,), torch.uint8)
    values, up, near = _gain_tables()
    peak = _encode_keys(
        x.numpy(),
        prof[:, :head_dim],
        prof[:, head_dim:],
        order[:, :n_u],  # the uniform tiers' channels, 4-bit first
        n4,
        idx1,
        run,
        with_offsets,
        values,
        up,
        near,
        spectral_tables(m),
        (offset_row, k4_row, k2_row, step, zero, k1_row, gain),
    )
    codec.check_values_within([x], float(peak))
    return out


def encode_values(x: torch.Tensor, codec: VidKVCodec, layer: int) -> dict[str, torch.Tensor]:
    """``vidkv_compact.encode_values`` of ``x``, values checked from the kernel's peak ``|x|``."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    codec.ensure_layer_state(x, "value", layer, check=True)
    prof = codec.profile("value", layer, x.shape, torch.device("cpu")).numpy()
    with_offsets = compact.uses_offsets(tokens, "value")
    out: dict[str, torch.Tensor] = {}
    offset_row = _row(f"{P}offset", packed_length(heads * head_dim, 4), out) if with_offsets else _NO_ROW
    tern_row = _row(f"{P}tern", packed_length(heads * tokens * head_dim, None), out)
    out[f"{P}gain"], gain = new_output((1,), torch.uint8)
    _, _, near = _gain_tables()
    peak = _encode_values(
        x.numpy(), prof, with_offsets, np.float32(codec.ternary_threshold), near, offset_row, tern_row, gain
    )
    codec.check_values_within([x], float(peak))
    return out


def _fields(codec: VidKVCodec, a: dict[str, np.ndarray], expected: dict[str, tuple[int, ...] | None]):
    """The arrays ``expected`` names, each checked against its shape (None: a field the block
    must not have; a stand-in comes back)."""
    arrays = []
    for name, shape in expected.items():
        full = f"{P}{name}"
        if shape is None:
            arrays.append(_NO_ROW)
            continue
        if full not in a or tuple(a[full].shape) != shape:
            got = tuple(a[full].shape) if full in a else "nothing"
            raise QuantError(
                f"{codec.name}: compact block field {full!r} should be {shape}, got {got}; "
                "the block is corrupt or was encoded with other options than this codec's"
            )
        arrays.append(a[full])
    return arrays


def decode_keys_into(enc: EncodedTensor, codec: VidKVCodec, out: torch.Tensor, mode: int) -> None:
    """``vidkv_compact.decode_keys`` written into ``out``."""
    heads, tokens, head_dim = enc.shape
    prof = codec.profile("key", enc.layer, enc.shape, torch.device("cpu")).numpy()
    tiers = codec._required_tiers(enc.layer, enc.shape)  # the reference's check and message
    idx4, idx2, idx1 = key_channels(tiers)
    n4, n2, m = idx4.shape[1], idx2.shape[1], idx1.shape[1]
    run = compact.run_tokens(tokens, n4 + n2, codec.group_size)
    runs = num_groups(tokens, run)
    with_offsets = f"{P}offset" in enc.tensors  # the reference adds offsets wherever stored
    fields = _fields(
        codec,
        numpy_arrays(enc.tensors),
        {
            "offset": (1, packed_length(heads * head_dim, 4)) if with_offsets else None,
            "k4": (1, packed_length(heads * tokens * n4, 4)) if n4 else None,
            "k2": (1, packed_length(heads * tokens * n2, 2)) if n2 else None,
            "step": (heads, runs) if n4 + n2 else None,
            "zero": (heads, runs) if n4 + n2 else None,
            "k1": (1, packed_length(heads * tokens * m, 1)),
            "gain": (1,),
        },
    )
    if not n4 + n2:
        fields[3], fields[4] = np.zeros((heads, 0), np.uint8), np.zeros((heads, 0), np.int8)
    _decode_keys(
        tuple(fields),
        with_offsets,
        prof[:, :head_dim],
        prof[:, head_dim:],
        idx4,
        idx2,
        idx1,
        run,
        _gain_tables()[0],
        spectral_tables(m),
        as_numpy_out(out),
        mode,
    )


def decode_values_into(enc: EncodedTensor, codec: VidKVCodec, out: torch.Tensor, mode: int) -> None:
    """``vidkv_compact.decode_values`` written into ``out``."""
    heads, tokens, head_dim = enc.shape
    prof = codec.profile("value", enc.layer, enc.shape, torch.device("cpu")).numpy()
    with_offsets = f"{P}offset" in enc.tensors
    offset_row, tern_row, gain = _fields(
        codec,
        numpy_arrays(enc.tensors),
        {
            "offset": (1, packed_length(heads * head_dim, 4)) if with_offsets else None,
            "tern": (1, packed_length(heads * tokens * head_dim, None)),
            "gain": (1,),
        },
    )
    _decode_values(
        offset_row,
        tern_row,
        gain,
        with_offsets,
        prof,
        _gain_tables()[0],
        trit_table(),
        as_numpy_out(out),
        mode,
    )
