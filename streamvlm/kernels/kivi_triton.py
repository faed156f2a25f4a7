"""Fused Triton decode of KIVI blocks (``kivi2``, ``kivi4``, ``kivi8``).

One program decodes a tile of ``[BLOCK_T tokens, head_dim]`` of one head straight from the
stored tensors: it reads the packed codes (``pack_per_head`` layout, token-major), the fp16
scale and minimum of each element's group, and writes ``q * scale + min`` in the requested
dtype. No unpacked codes or float32 copy are materialized.

Reference: ``streamvlm.quant.kivi.KIVICodec.decode``. Exact: ``q * scale`` of a code below
256 and an fp16 scale needs at most 19 significant bits, so it is exact in float32, and the
one rounding left (``+ min``) is the reference's (FMA contraction is off anyway, see
``triton_common.LAUNCH_OPTIONS``); the cast to the output dtype rounds to nearest even as
``Tensor.to`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import num_groups
from ..quant.kivi import KIVICodec
from ..quant.packing import packed_length
from ..transfer import to_device
from .backend import check_runnable
from .tiles import decode_tile
from .triton_common import LAUNCH_OPTIONS, load_bits, to_output


@triton.jit
def _kivi_decode_kernel(
    codes_ptr,
    scale_ptr,
    min_ptr,
    out_ptr,
    T,
    D,
    row_bytes,
    n_groups,
    group,
    KEY: tl.constexpr,
    BITS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    live = (t < T) & (d < D)
    q = load_bits(codes_ptr + h * row_bytes, t * D + d, live, BITS)
    if KEY:  # per channel: groups of `group` tokens, scale [heads, head_dim, groups]
        meta = (h * D + d) * n_groups + t // group
    else:  # per token: groups of `group` channels, scale [heads, tokens, groups]
        meta = (h * T + t) * n_groups + d // group
    s = tl.load(scale_ptr + meta, mask=live, other=0).to(tl.float32)
    m = tl.load(min_ptr + meta, mask=live, other=0).to(tl.float32)
    x = q.to(tl.float32) * s + m
    tl.store(out_ptr + (h * T + t) * D + d, to_output(x, out_ptr), mask=live)


def decode(enc: EncodedTensor, codec: KIVICodec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``codec.decode(enc, device, dtype)`` computed by one Triton kernel."""
    heads, tokens, head_dim = enc.shape
    key = enc.kind == "key"
    t = to_device({name: enc.tensors[name] for name in ("codes", "scale", "min")}, device)
    n_groups = t["scale"].shape[-1]
    if n_groups != num_groups(tokens if key else head_dim, codec.group_size):
        raise QuantError(
            f"{codec.name}: encoded with another group_size than {codec.group_size}; "
            "decode with a codec built with the encoding options"
        )
    row_bytes = packed_length(tokens * head_dim, codec.bits)
    if tuple(t["codes"].shape) != (heads, row_bytes):
        raise QuantError(
            f"{codec.name}: codes have shape {tuple(t['codes'].shape)}, expected {(heads, row_bytes)} "
            f"for {enc.shape}; the block is damaged or from another codec"
        )
    out = torch.empty(enc.shape, dtype=dtype, device=device)
    check_runnable(_kivi_decode_kernel, device)
    block_t, block_d = decode_tile(tokens, head_dim)
    grid = (heads, triton.cdiv(tokens, block_t))
    _kivi_decode_kernel[grid](
        t["codes"],
        t["scale"],
        t["min"],
        out,
        tokens,
        head_dim,
        row_bytes,
        n_groups,
        codec.group_size,
        KEY=key,
        BITS=codec.bits,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        **LAUNCH_OPTIONS,
    )
    return out
