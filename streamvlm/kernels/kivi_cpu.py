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
from .cpu_common import JIT, PARALLEL_JIT, as_numpy_out, match_torch_threads, read_bits, store, tables
from .cpu_common import to_f16_bits, u16, write_bits


@njit(**JIT)
def _at(x_h, key, r, i):
    # element i of group row r: keys group channel r over tokens, values token r over channels
    return x_h[i, r] if key else x_h[r, i]


@njit(**PARALLEL_JIT)
def _encode(x, key, bits, group, f16, codes, scale, mn_out):
    heads, tokens, head_dim = x.shape
    rows, length = (head_dim, tokens) if key else (tokens, head_dim)
    levels = np.float32((1 << bits) - 1)
    n_groups = scale.shape[2]
    for h in prange(heads):
        x_h = x[h]
        codes[h, :] = 0
        for r in range(rows):
            for g in range(n_groups):
                start = g * group
                stop = min(length, start + group)
                mn = _at(x_h, key, r, start)
                mx = mn
                for i in range(start + 1, stop):
                    v = _at(x_h, key, r, i)
                    mn = min(mn, v)
                    mx = max(mx, v)
                mn16 = to_f16_bits(mn)
                mnf = f16[mn16]
                sc16 = to_f16_bits((mx - mnf) / levels)
                s = f16[sc16]
                if not s > np.float32(0.0):
                    s = np.float32(1.0)
                scale[h, r, g] = sc16
                mn_out[h, r, g] = mn16
                for i in range(start, stop):
                    q = min(max(np.rint((_at(x_h, key, r, i) - mnf) / s), np.float32(0.0)), levels)
                    t, d = (i, r) if key else (r, i)
                    write_bits(codes[h], t * head_dim + d, bits, np.int64(q))


@njit(**PARALLEL_JIT)
def _decode(codes, scale, mn, key, bits, group, f16, out, mode):
    heads, tokens, head_dim = out.shape
    for h in prange(heads):
        row = codes[h]
        for t in range(tokens):
            for d in range(head_dim):
                if key:
                    s, m = f16[scale[h, d, t // group]], f16[mn[h, d, t // group]]
                else:
                    s, m = f16[scale[h, t, d // group]], f16[mn[h, t, d // group]]
                q = np.float32(read_bits(row, t * head_dim + d, bits))
                store(out, h, t, d, q * s + m, mode)


def encode(x: torch.Tensor, codec: KIVICodec, kind: str) -> dict[str, torch.Tensor]:
    """``codec._encode(x, kind, layer)``: packed codes, float16 scale and minimum."""
    x = x.float().contiguous()
    heads, tokens, head_dim = x.shape
    key = kind == "key"
    rows, length = (head_dim, tokens) if key else (tokens, head_dim)
    n_groups = num_groups(length, codec.group_size)
    codes = torch.empty(heads, packed_length(tokens * head_dim, codec.bits), dtype=torch.uint8)
    scale = torch.empty(heads, rows, n_groups, dtype=torch.float16)
    mn = torch.empty_like(scale)
    match_torch_threads()
    _encode(x.numpy(), key, codec.bits, codec.group_size, tables()[1], codes.numpy(), u16(scale), u16(mn))
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
        u16(t["scale"]),
        u16(t["min"]),
        key,
        codec.bits,
        codec.group_size,
        tables()[1],
        as_numpy_out(out),
        mode,
    )
