"""``vidkv`` encode and decode on a CPU, compiled by numba (standard layout only).

Reference: ``streamvlm.quant.vidkv.VidKVCodec``; same bytes, same floats (rules in
``cpu_common``). Each kernel runs one head per numba thread. What stays in torch, called
exactly as the reference calls it so its results are the reference's by construction:

* the rfft of the sign-tier channels and its inverse (``torch.fft``: O(m log m) per token
  where a DFT matmul would cost m**2, and bit-identical to the reference's own call);
* the choice of salient value tokens (``selection.salient_tokens``: a norm and a sort) and
  of the key channel tiers (``VidKVCodec.calibrate``, once per layer).

Everything else (min-max and log8 metadata, signs, ternaries, packing, scatter into the
output) is a numba loop that reads the input once and writes each output byte once.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from numba import njit, prange

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import balanced_group, num_groups
from ..quant.packing import packed_length
from ..quant.selection import channel_rows, salient_count, salient_tokens, tier_indices
from ..quant.uniform import zero_units
from ..quant.vidkv import VidKVCodec
from .cpu_common import (
    JIT,
    PARALLEL_JIT,
    as_numpy_out,
    bf16_round_up_bits,
    bf16_value,
    log8_code,
    match_torch_threads,
    read_bits,
    store,
    tables,
    u16,
    write_bits,
)

# ----- log8 min-max rows (uniform.encode_log8_minmax / decode_log8_minmax) ---------------
# A "row" is what one group runs along: a key channel over tokens (``by_column``: the row is
# a column of the head's [tokens, head_dim] matrix) or a salient value token over channels.
# Codes are packed row-major over the head's [len, rows] (keys: token-major) or [rows, len].


@njit(**JIT)
def _elem(x_h, by_column, index, r, i):
    return x_h[i, index[r]] if by_column else x_h[index[r], i]


@njit(**JIT)
def _code_index(by_column, rows, length, r, i):
    return i * rows + r if by_column else r * length + i


@njit(**JIT)
def _encode_minmax(x_h, by_column, index, length, bits, group, bounds, table, codes, scale, zero):
    """One head's rows -> packed codes, log8 scale and int8 zero point; returns head_max bits."""
    rows, n_groups = scale.shape
    levels = np.float32((1 << bits) - 1)
    units = np.float32(zero_units_of(bits))
    step = np.empty((rows, n_groups), np.float32)
    low = np.empty((rows, n_groups), np.float32)
    top = np.float32(0.0)
    for r in range(rows):
        for g in range(n_groups):
            start = g * group
            stop = min(length, start + group)
            mn = _elem(x_h, by_column, index, r, start)
            mx = mn
            for i in range(start + 1, stop):
                v = _elem(x_h, by_column, index, r, i)
                mn = min(mn, v)
                mx = max(mx, v)
            # uniform._log8_step
            s = max((mx - mn) / levels, ((abs(mn) * np.float32(1.03)) * units) / np.float32(127.0))
            step[r, g] = s
            low[r, g] = mn
            top = max(top, s)
    hm_bits = bf16_round_up_bits(top)
    hm = bf16_value(hm_bits)
    codes[:] = 0
    for r in range(rows):
        for g in range(n_groups):
            code = log8_code(step[r, g], hm, bounds)
            s = table[code] * hm
            if not s > np.float32(0.0):
                s = np.float32(1.0)
            z = min(max(np.rint((low[r, g] / s) * units), np.float32(-128.0)), np.float32(127.0))
            scale[r, g] = code
            zero[r, g] = np.int8(z)
            zf = z / units
            start = g * group
            for i in range(start, min(length, start + group)):
                q = min(max(np.rint(_elem(x_h, by_column, index, r, i) / s - zf), np.float32(0.0)), levels)
                write_bits(codes, _code_index(by_column, rows, length, r, i), bits, np.int64(q))
    return hm_bits


@njit(**JIT)
def zero_units_of(bits):
    return 4 if bits <= 2 else 2  # uniform.zero_units


@njit(**JIT)
def _decode_minmax(codes, scale, zero, hm, by_column, index, length, bits, group, table, out, h, mode):
    """One head's rows decoded into ``out[h]`` (keys: column ``index[r]``; values: token ``index[r]``)."""
    rows = scale.shape[0]
    units = np.float32(zero_units_of(bits))
    for r in range(rows):
        for i in range(length):
            g = i // group
            s = table[scale[r, g]] * hm
            q = np.float32(read_bits(codes, _code_index(by_column, rows, length, r, i), bits))
            x = (q + np.float32(zero[r, g]) / units) * s
            if by_column:
                store(out, h, i, index[r], x, mode)
            else:
                store(out, h, index[r], i, x, mode)


# ----- keys ------------------------------------------------------------------------------


@njit(**JIT)
def _component(spec, h, t, k, n_real):
    # rfft_components: real parts of bins 0..n_real-1, then imaginary parts of bins 1..
    return spec[h, t, k, 0] if k < n_real else spec[h, t, k - n_real + 1, 1]


@njit(**JIT)
def _encode_tier(x_h, index, tokens, bits, group, bounds, table, tier, h):
    codes, scale, zero, hmax = tier
    if index.shape[0]:
        hmax[h] = _encode_minmax(x_h, True, index, tokens, bits, group, bounds, table, codes[h], scale[h], zero[h])


@njit(**JIT)
def _decode_tier(index, tokens, bits, group, table, tier, out, h, mode):
    codes, scale, zero, hmax = tier
    if index.shape[0]:
        _decode_minmax(
            codes[h], scale[h], zero[h], bf16_value(hmax[h]), True, index, tokens, bits, group, table, out, h, mode
        )


@njit(**PARALLEL_JIT)
def _encode_keys(x, idx4, idx2, spec, m, group, bounds, table, out4, out2, signs, k1_scale, k1_max):
    heads, tokens, _ = x.shape
    n_real = m // 2 + 1
    n_groups = k1_scale.shape[2]
    for h in prange(heads):
        _encode_tier(x[h], idx4[h], tokens, 4, group, bounds, table, out4, h)
        _encode_tier(x[h], idx2[h], tokens, 2, group, bounds, table, out2, h)
        # sign tier: one bit per component, level = mean |component| per group (lowbit.sign_encode)
        signs[h, :] = 0
        level = np.empty((m, n_groups), np.float32)
        top = np.float32(0.0)
        for k in range(m):
            for g in range(n_groups):
                start = g * group
                stop = min(tokens, start + group)
                acc = 0.0
                for t in range(start, stop):
                    c = _component(spec, h, t, k, n_real)
                    acc += np.float64(abs(c))
                    if c >= np.float32(0.0):
                        write_bits(signs[h], t * m + k, 1, 1)
                lv = np.float32(acc) / np.float32(stop - start)
                level[k, g] = lv
                top = max(top, lv)
        hm_bits = bf16_round_up_bits(top)
        k1_max[h] = hm_bits
        hm = bf16_value(hm_bits)
        for k in range(m):
            for g in range(n_groups):
                k1_scale[h, k, g] = log8_code(level[k, g], hm, bounds)


@njit(**PARALLEL_JIT)
def _sign_components(signs, k1_scale, k1_max, m, group, table, spec):
    """Decoded sign-tier components (``+-level``) laid out as the complex rfft spectrum."""
    heads, tokens, n_bins, _ = spec.shape
    n_real = m // 2 + 1
    for h in prange(heads):
        hm = bf16_value(k1_max[h])
        for t in range(tokens):
            g = t // group
            spec[h, t, 0, 1] = 0.0
            spec[h, t, n_bins - 1, 1] = 0.0  # the Nyquist bin's, when m is even
            for k in range(m):
                level = table[k1_scale[h, k, g]] * hm
                c = (np.float32(read_bits(signs[h], t * m + k, 1)) * np.float32(2.0) - np.float32(1.0)) * level
                if k < n_real:
                    spec[h, t, k, 0] = c
                else:
                    spec[h, t, k - n_real + 1, 1] = c


@njit(**PARALLEL_JIT)
def _decode_keys(idx4, idx2, tiers4, tiers2, idx1, signal, group, table, out, mode):
    heads, tokens, _ = out.shape
    for h in prange(heads):
        _decode_tier(idx4[h], tokens, 4, group, table, tiers4, out, h, mode)
        _decode_tier(idx2[h], tokens, 2, group, table, tiers2, out, h, mode)
        for t in range(tokens):
            for j in range(idx1.shape[1]):
                store(out, h, t, idx1[h, j], signal[h, t, j], mode)


# id of a frozen tier tensor -> (a weak reference to it, its channel indices per tier): the
# argsorts run once per layer, not per block; the weak reference tells a reused id apart
_CHANNELS: dict[int, tuple[weakref.ref, tuple[np.ndarray, ...]]] = {}


def key_channels(tiers: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(4-bit, 2-bit, sign-tier) channel indices ``[heads, count]`` of a layer's frozen tiers."""
    cached = _CHANNELS.get(id(tiers))
    if cached is None or cached[0]() is not tiers:
        channels = tuple(np.ascontiguousarray(tier_indices(tiers, tier).numpy()) for tier in (2, 1, 0))
        cached = _CHANNELS[id(tiers)] = (weakref.ref(tiers, lambda _, key=id(tiers): _CHANNELS.pop(key, None)), channels)
    return cached[1]


def _tier_buffers(heads: int, tokens: int, count: int, bits: int, n_groups: int):
    return (
        torch.zeros(heads, packed_length(tokens * count, bits), dtype=torch.uint8),
        torch.empty(heads, count, n_groups, dtype=torch.uint8),
        torch.empty(heads, count, n_groups, dtype=torch.int8),
        torch.zeros(heads, dtype=torch.bfloat16),
    )


def _np_tier(buffers):
    codes, scale, zero, hmax = buffers
    return codes.numpy(), scale.numpy(), zero.numpy(), u16(hmax)


def encode_keys(x: torch.Tensor, codec: VidKVCodec, layer: int) -> dict[str, torch.Tensor]:
    """``VidKVCodec._encode_keys``: calibrates the layer on its first block, like the reference."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    if codec._layer_tiers(layer, heads, head_dim) is None:
        codec.calibrate(layer, x)
    idx4, idx2, idx1 = key_channels(codec._tiers[layer])
    group = balanced_group(tokens, codec.group_size)
    n_groups = num_groups(tokens, group)
    m = idx1.shape[1]
    # the reference's rfft_components call: torch.fft.rfft over the gathered sign channels
    spec = torch.fft.rfft(x.gather(2, channel_rows(torch.from_numpy(idx1), tokens)), dim=-1)
    tiers = {bits: _tier_buffers(heads, tokens, idx.shape[1], bits, n_groups) for bits, idx in ((4, idx4), (2, idx2))}
    signs = torch.empty(heads, packed_length(tokens * m, 1), dtype=torch.uint8)
    k1_scale = torch.empty(heads, m, n_groups, dtype=torch.uint8)
    k1_max = torch.empty(heads, dtype=torch.bfloat16)
    log8, _, nearest, _ = tables()
    match_torch_threads()
    _encode_keys(
        x.numpy(), idx4, idx2, torch.view_as_real(spec).numpy(), m, group, nearest, log8,
        _np_tier(tiers[4]), _np_tier(tiers[2]), signs.numpy(), k1_scale.numpy(), u16(k1_max),
    )
    out: dict[str, torch.Tensor] = {}
    for bits, idx in ((4, idx4), (2, idx2)):
        if idx.shape[1]:
            out.update(zip((f"k{bits}.{f}" for f in ("codes", "scale", "zero", "scale_max")), tiers[bits]))
    out.update({"k1.signs": signs, "k1.scale": k1_scale, "k1.scale_max": k1_max})
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
    """``VidKVCodec._decode_keys`` written into ``out``: signs to spectrum (numba), ``torch.fft.irfft``
    (the reference's call), then every channel into ``out`` (numba)."""
    heads, tokens, head_dim = enc.shape
    idx4, idx2, idx1 = key_channels(_key_tiers(codec, enc.layer, heads, head_dim))
    t = {name: x.cpu().contiguous() for name, x in enc.tensors.items()}
    group = balanced_group(tokens, codec.group_size)
    _check_groups(codec, t["k1.scale"].shape[-1], tokens, group)
    m = idx1.shape[1]
    n_groups = num_groups(tokens, group)
    log8 = tables()[0]
    match_torch_threads()
    spec = torch.empty(heads, tokens, m // 2 + 1, dtype=torch.complex64)
    _sign_components(
        t["k1.signs"].numpy(), t["k1.scale"].numpy(), u16(t["k1.scale_max"]), m, group, log8,
        torch.view_as_real(spec).numpy(),
    )
    signal = torch.fft.irfft(spec, n=m, dim=-1)  # spectral.from_rfft_components
    tiers = {}
    for bits, idx in ((4, idx4), (2, idx2)):
        names = [f"k{bits}.{part}" for part in ("codes", "scale", "zero", "scale_max")]
        if idx.shape[1] and not all(name in t for name in names):
            raise QuantError(f"{codec.name}: key block lacks the {bits}-bit tier the layer's tiers call for")
        tiers[bits] = _np_tier([t[n] for n in names] if idx.shape[1] else _tier_buffers(heads, 0, 0, bits, n_groups))
    _decode_keys(idx4, idx2, tiers[4], tiers[2], idx1, signal.numpy(), group, log8, as_numpy_out(out), mode)


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


@njit(**PARALLEL_JIT)
def _encode_values(
    x, flags, threshold, group, sal_group, bounds, table,
    mask, tern, tern_scale, tern_max, sal_codes, sal_scale, sal_zero, sal_max,
):
    heads, tokens, head_dim = x.shape
    n_groups = tern_scale.shape[2]
    pow3 = np.array([1, 3, 9, 27, 81], np.int64)
    for h in prange(heads):
        x_h = x[h]
        sal, rest = _token_split(flags[h])
        mask[h, :] = 0
        for i in range(sal.shape[0]):
            write_bits(mask[h], sal[i], 1, 1)
        # the others: ternary per channel over groups of rest tokens (lowbit.ternary_encode,
        # ternary_ls_level), codes packed token-major as base-3 trits of t + 1
        n_rest = rest.shape[0]
        row = tern[h]
        row[:] = 0
        level = np.empty((head_dim, n_groups), np.float32)
        top = np.float32(0.0)
        for d in range(head_dim):
            for g in range(n_groups):
                start = g * group
                stop = min(n_rest, start + group)
                acc = 0.0
                for r in range(start, stop):
                    acc += np.float64(abs(x_h[rest[r], d]))
                thr = (np.float32(acc) / np.float32(stop - start)) * threshold
                acc = 0.0
                count = 0
                for r in range(start, stop):
                    v = x_h[rest[r], d]
                    code = 1
                    if v > thr:
                        code = 2
                    elif v < -thr:
                        code = 0
                    if code != 1:
                        acc += np.float64(abs(v))
                        count += 1
                    i = r * head_dim + d
                    row[i // 5] += np.uint8(code * pow3[i % 5])
                lv = np.float32(acc) / np.float32(max(count, 1))
                level[d, g] = lv
                top = max(top, lv)
        hm_bits = bf16_round_up_bits(top)
        tern_max[h] = hm_bits
        hm = bf16_value(hm_bits)
        for d in range(head_dim):
            for g in range(n_groups):
                tern_scale[h, d, g] = log8_code(level[d, g], hm, bounds)
        # salient tokens: 2 bits per token in groups of channels
        sal_max[h] = _encode_minmax(
            x_h, False, sal, head_dim, 2, sal_group, bounds, table, sal_codes[h], sal_scale[h], sal_zero[h]
        )


@njit(**PARALLEL_JIT)
def _decode_values(mask, tern, tern_scale, tern_max, sal_codes, sal_scale, sal_zero, sal_max, group, sal_group, table, out, mode):
    heads, tokens, head_dim = out.shape
    for h in prange(heads):
        flags = np.empty(tokens, np.int64)
        for t in range(tokens):
            flags[t] = read_bits(mask[h], t, 1)
        sal, rest = _token_split(flags)
        hm = bf16_value(tern_max[h])
        row = tern[h]
        for r in range(rest.shape[0]):
            g = r // group
            for d in range(head_dim):
                i = r * head_dim + d
                trit = (np.int64(row[i // 5]) // _POW3[i % 5]) % 3
                level = table[tern_scale[h, d, g]] * hm
                store(out, h, rest[r], d, np.float32(trit - 1) * level, mode)
        _decode_minmax(
            sal_codes[h], sal_scale[h], sal_zero[h], bf16_value(sal_max[h]), False, sal, head_dim, 2,
            sal_group, table, out, h, mode,
        )


_POW3 = np.array([1, 3, 9, 27, 81], np.int64)


def encode_values(x: torch.Tensor, codec: VidKVCodec) -> dict[str, torch.Tensor]:
    """``VidKVCodec._encode_values``: salient tokens chosen by the reference's function."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    sal = salient_tokens(x, salient_count(tokens, codec.salient_fraction))
    n_sal = int(sal[0].sum())
    n_rest = tokens - n_sal
    group = balanced_group(n_rest, codec.group_size)
    sal_group = balanced_group(head_dim, codec.group_size)
    sal_groups = num_groups(head_dim, sal_group)
    t = {
        "salient": torch.empty(heads, packed_length(tokens, 1), dtype=torch.uint8),
        "tern.codes": torch.empty(heads, packed_length(n_rest * head_dim, None), dtype=torch.uint8),
        "tern.scale": torch.empty(heads, head_dim, num_groups(n_rest, group), dtype=torch.uint8),
        "tern.scale_max": torch.empty(heads, dtype=torch.bfloat16),
        "sal.codes": torch.empty(heads, packed_length(n_sal * head_dim, 2), dtype=torch.uint8),
        "sal.scale": torch.empty(heads, n_sal, sal_groups, dtype=torch.uint8),
        "sal.zero": torch.empty(heads, n_sal, sal_groups, dtype=torch.int8),
        "sal.scale_max": torch.empty(heads, dtype=torch.bfloat16),
    }
    log8, _, nearest, _ = tables()
    match_torch_threads()
    _encode_values(
        x.numpy(), sal.to(torch.int64).numpy(), np.float32(codec.ternary_threshold), group, sal_group,
        nearest, log8, *(u16(v) if v.dtype == torch.bfloat16 else v.numpy() for v in t.values()),
    )
    return t


def decode_values_into(enc: EncodedTensor, codec: VidKVCodec, out: torch.Tensor, mode: int) -> None:
    """``VidKVCodec._decode_values`` written into ``out``."""
    heads, tokens, head_dim = enc.shape
    t = {name: x.cpu().contiguous() for name, x in enc.tensors.items()}
    n_sal = t["sal.scale"].shape[1]
    group = balanced_group(tokens - n_sal, codec.group_size)
    _check_groups(codec, t["tern.scale"].shape[-1], tokens - n_sal, group)
    sal_group = balanced_group(head_dim, codec.group_size)
    names = ("salient", "tern.codes", "tern.scale", "tern.scale_max", "sal.codes", "sal.scale", "sal.zero", "sal.scale_max")
    match_torch_threads()
    _decode_values(
        *(u16(t[n]) if t[n].dtype == torch.bfloat16 else t[n].numpy() for n in names),
        group, sal_group, tables()[0], as_numpy_out(out), mode,
    )
