"""KIVI encode and decode on a CPU, compiled by numba: one pass over the block per head.

Reference: ``streamvlm.quant.kivi.KIVICodec`` (``uniform.encode_fp16`` / ``decode_fp16``,
``packing.pack_per_head``); same bytes, same floats (rules in ``cpu_common``). Keys are
grouped per channel over tokens, values per token over channels; codes are packed
token-major for both, scale and minimum are float16.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import num_groups
from ..quant.kivi import KIVICodec
from ..quant.packing import packed_length
from .cpu_common import (
    JIT,
    PARALLEL_JIT,
    as_numpy_out,
    emit_row,
    f16_bits,
    f16_value,
    match_torch_threads,
    new_output,
    pack_bits_row,
    unpack_bits_row,
)

# Inner loops index 1-D slices with a loop variable that starts at 0: numba then knows the
# index is not negative and LLVM vectorises; any other index (``start + j``) gets a
# negative-index check per element that makes the loop scalar (8-10x slower).


@njit(**JIT)
def _encode_head(h, x, key, bits, group, codes, scale, mn_out):
    heads, tokens, head_dim = x.shape
    levels = np.float32((1 << bits) - 1)
    x_h = x[h]
    q = np.empty(tokens * head_dim, np.uint8)
    if key:
        # per channel over groups of tokens, vectorised across channels
        lo = np.empty(head_dim, np.float32)
        hi = np.empty(head_dim, np.float32)
        mnf = np.empty(head_dim, np.float32)
        s = np.empty(head_dim, np.float32)
        for g in range(scale.shape[2]):
            start = g * group
            stop = min(tokens, start + group)
            lo[:] = x_h[start]
            hi[:] = x_h[start]
            for t in range(start + 1, stop):
                x_t = x_h[t]
                for d in range(head_dim):
                    lo[d] = min(lo[d], x_t[d])
                    hi[d] = max(hi[d], x_t[d])
            for d in range(head_dim):
                m16 = f16_bits(lo[d])
                mnf[d] = f16_value(m16)
                s16 = f16_bits((hi[d] - mnf[d]) / levels)
                sf = f16_value(s16)
                s[d] = sf if sf > np.float32(0.0) else np.float32(1.0)
                scale[h, d, g] = s16
                mn_out[h, d, g] = m16
            for t in range(start, stop):
                x_t = x_h[t]
                q_t = q[t * head_dim : (t + 1) * head_dim]
                for d in range(head_dim):
                    v = np.rint((x_t[d] - mnf[d]) / s[d])
                    q_t[d] = np.uint8(min(max(v, np.float32(0.0)), levels))
    else:
        # per token over groups of channels
        for t in range(tokens):
            for g in range(scale.shape[2]):
                start = g * group
                stop = min(head_dim, start + group)
                x_g = x_h[t, start:stop]
                q_g = q[t * head_dim + start : t * head_dim + stop]
                lo = x_g[0]
                hi = lo
                for d in range(x_g.shape[0]):
                    lo = min(lo, x_g[d])
                    hi = max(hi, x_g[d])
                m16 = f16_bits(lo)
                mnf = f16_value(m16)
                s16 = f16_bits((hi - mnf) / levels)
                sf = f16_value(s16)
                sf = sf if sf > np.float32(0.0) else np.float32(1.0)
                scale[h, t, g] = s16
                mn_out[h, t, g] = m16
                for d in range(x_g.shape[0]):
                    v = np.rint((x_g[d] - mnf) / sf)
                    q_g[d] = np.uint8(min(max(v, np.float32(0.0)), levels))
    pack_bits_row(q, tokens * head_dim, bits, codes[h])


@njit(**PARALLEL_JIT)
def _encode(x, key, bits, group, codes, scale, mn_out):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(x.shape[0]):
        _encode_head(h, x, key, bits, group, codes, scale, mn_out)


@njit(**JIT)
def _decode_head(h, codes, scale, mn, key, bits, group, out, mode):
    # scale and mn: float32 (exact copies of the float16 fields)
    heads, tokens, head_dim = out.shape
    q = np.empty(tokens * head_dim, np.uint8)
    unpack_bits_row(codes[h], tokens * head_dim, bits, q)
    row = np.empty(head_dim, np.float32)
    s = np.empty(head_dim, np.float32)
    m = np.empty(head_dim, np.float32)
    for t in range(tokens):
        q_t = q[t * head_dim : (t + 1) * head_dim]
        if key:
            if t % group == 0:  # a new group of tokens: every channel's scale and minimum
                s[:] = scale[h, :, t // group]
                m[:] = mn[h, :, t // group]
            for d in range(head_dim):
                row[d] = np.float32(q_t[d]) * s[d] + m[d]
        else:
            for g in range(scale.shape[2]):
                sg, mg = scale[h, t, g], mn[h, t, g]
                start = g * group
                r_g = row[start : start + group]
                q_g = q_t[start : start + group]
                for d in range(r_g.shape[0]):
                    r_g[d] = np.float32(q_g[d]) * sg + mg
        emit_row(row, out, h, t, mode)


@njit(**PARALLEL_JIT)
def _decode(codes, scale, mn, key, bits, group, out, mode):
    # one head per thread; the head's work is a plain function, which numba's parallel
    # transform leaves alone (inside a prange body its loops lose vectorisation: 4x slower)
    for h in prange(codes.shape[0]):
        _decode_head(h, codes, scale, mn, key, bits, group, out, mode)


def encode(x: torch.Tensor, codec: KIVICodec, kind: str) -> dict[str, torch.Tensor]:
    """``codec._encode(x, kind, layer)``: packed codes, float16 scale and minimum."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    key = kind == "key"
    rows, length = (head_dim, tokens) if key else (tokens, head_dim)
    n_groups = num_groups(length, codec.group_size)
    codes, codes_a = new_output((heads, packed_length(tokens * head_dim, codec.bits)), torch.uint8)
    scale, scale_a = new_output((heads, rows, n_groups), torch.float16)
    mn, mn_a = new_output((heads, rows, n_groups), torch.float16)
    match_torch_threads()
    _encode(x.numpy(), key, codec.bits, codec.group_size, codes_a, scale_a, mn_a)
    return {"codes": codes, "scale": scale, "min": mn}


def decode_into(enc: EncodedTensor, codec: KIVICodec, out: torch.Tensor, mode: int) -> None:
    """``codec.decode(enc)`` written into ``out`` (CPU, any strides, dtype of ``mode``)."""
    heads, tokens, head_dim = enc.shape
    key = enc.kind == "key"
    t = {name: enc.tensors[name].cpu().contiguous() for name in ("codes", "scale", "min")}
    if t["scale"].shape[-1] != num_groups(tokens if key else head_dim, codec.group_size):
        raise QuantError(
            f"{codec.name}: encoded with another group_size than {codec.group_size}; "
            "decode with a codec built with the encoding options"
        )
    if tuple(t["codes"].shape) != (heads, packed_length(tokens * head_dim, codec.bits)):
        raise QuantError(
            f"{codec.name}: codes have shape {tuple(t['codes'].shape)}, not that of {enc.shape}; "
            "the block is damaged or from another codec"
        )
    match_torch_threads()
    _decode(
        t["codes"].numpy(),
        t["scale"].float().numpy(),
        t["min"].float().numpy(),
        key,
        codec.bits,
        codec.group_size,
        as_numpy_out(out),
        mode,
    )
