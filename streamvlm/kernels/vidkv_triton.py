"""Fused Triton decode of ``vidkv`` blocks (keys and values).

Values: one kernel. Each program takes a tile of ``[BLOCK_T tokens, head_dim]`` of one head,
reads the 1-bit salient mask, turns it into each token's row in the salient part or in the
ternary part (a prefix count: blocks before the tile, then ``tl.cumsum`` inside it), and
decodes either 2-bit codes with log8 scale and int8 zero point (salient tokens) or base-3
trits times a log8 level (the others). Reference: ``VidKVCodec._decode_values``.

Keys: one kernel for everything but the inverse rfft. It writes the 4-bit and 2-bit
channels (log8 min-max, per channel in groups of tokens) into the output and the
sign-quantized frequency components (``+-level``) into a ``[heads, tokens, m]`` buffer;
``spectral.from_rfft_components`` (the reference's own function: ``torch.fft.irfft`` on a GPU) then
turns them into the ``m`` sign-tier channels, which are scattered into the output. Why the
FFT stays in torch: it is ``O(m log m)`` per token on at most half of head_dim, cuFFT does it
well, and a DFT written as a matmul in the kernel would round differently from the
reference (and from the encoder's rfft) for no measured gain. Reference:
``VidKVCodec._decode_keys``.

Exact: every product the kernels form is either exact (code times scale, sign times
level) or the reference's own single rounding (``table[code] * head_max``, ``(q + z/u) * s``),
and the sign components go through the same torch function as in the reference.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import balanced_group, num_groups
from ..quant.packing import packed_length, unpack_per_head
from ..quant.scales import decode_log8
from ..quant.selection import channel_rows, tier_indices
from ..quant.spectral import from_rfft_components
from ..quant.vidkv import VidKVCodec
from ..transfer import to_device
from .backend import check_runnable
from .tiles import decode_tile
from .triton_common import LAUNCH_OPTIONS, load_bits, load_trits, log8_minmax, log8_scale, to_output

_TABLES: dict[torch.device, torch.Tensor] = {}


def log8_table(device: torch.device) -> torch.Tensor:
    """The 256 float32 log8 ratios on ``device``, read through the public decoder (head_max 1)."""
    if device not in _TABLES:
        codes = torch.arange(256, dtype=torch.uint8)
        _TABLES[device] = decode_log8(codes, torch.ones(1, dtype=torch.bfloat16)).to(device).contiguous()
    return _TABLES[device]


# values ---------------------------------------------------------------------------------


@triton.jit
def _vidkv_values_kernel(
    sal_ptr,
    tern_ptr,
    tern_scale_ptr,
    tern_max_ptr,
    sal_codes_ptr,
    sal_scale_ptr,
    sal_zero_ptr,
    sal_max_ptr,
    table_ptr,
    out_ptr,
    T,
    D,
    n_sal,
    mask_bytes,
    tern_bytes,
    sal_bytes,
    tern_groups,
    tern_group,
    sal_groups,
    sal_group,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    pid_t = tl.program_id(1)
    mask_row = sal_ptr + h * mask_bytes
    # salient tokens before this tile: the rows of salient and ternary tokens are in token order
    before = tl.zeros([], dtype=tl.int32)
    for b in range(0, pid_t):
        tb = b * BLOCK_T + tl.arange(0, BLOCK_T)
        before += tl.sum(load_bits(mask_row, tb, tb < T, 1), axis=0)
    t1 = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    flag = load_bits(mask_row, t1, t1 < T, 1)
    upto = before + tl.cumsum(flag, axis=0)  # salient tokens in [0, t]
    sal_row = (upto - 1)[:, None]
    tern_row = (t1 - upto)[:, None]
    t = t1[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    live = (t < T) & (d < D)
    is_sal = live & (flag[:, None] != 0)
    is_tern = live & (flag[:, None] == 0)

    # ternary tokens: per channel, groups of `tern_group` ternary tokens share a level
    trit = load_trits(tern_ptr + h * tern_bytes, tern_row * D + d, is_tern)
    tern_max = tl.load(tern_max_ptr + h).to(tl.float32)
    level = log8_scale(
        table_ptr, tern_scale_ptr + (h * D + d) * tern_groups + tern_row // tern_group, tern_max, is_tern
    )
    v_tern = (trit - 1).to(tl.float32) * level

    # salient tokens: 2-bit per token, groups of `sal_group` channels
    sal_max = tl.load(sal_max_ptr + h, mask=n_sal > 0, other=0).to(tl.float32)
    meta = (h * n_sal + sal_row) * sal_groups + d // sal_group
    v_sal = log8_minmax(
        sal_codes_ptr + h * sal_bytes,
        sal_scale_ptr,
        sal_zero_ptr,
        table_ptr,
        sal_max,
        sal_row * D + d,
        meta,
        is_sal,
        2,
    )
    x = tl.where(is_sal, v_sal, v_tern)
    tl.store(out_ptr + (h * T + t) * D + d, to_output(x, out_ptr), mask=live)


def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # stands in for an absent tensor (no salient tokens, no 4-bit tier): never read
    return torch.zeros(1, dtype=dtype, device=device)


def decode_values(
    enc: EncodedTensor, codec: VidKVCodec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``codec.decode(enc, device, dtype)`` for a value block, in one Triton kernel."""
    heads, tokens, head_dim = enc.shape
    t = to_device(enc.tensors, device)
    n_sal = t["sal.scale"].shape[1]
    n_tern = tokens - n_sal
    tern_group = balanced_group(n_tern, codec.group_size)
    sal_group = balanced_group(head_dim, codec.group_size)
    tern_groups, sal_groups = t["tern.scale"].shape[-1], t["sal.scale"].shape[-1]
    if tern_groups != num_groups(n_tern, tern_group) or sal_groups != num_groups(head_dim, sal_group):
        raise QuantError(
            f"{codec.name}: encoded with another group_size than {codec.group_size}; "
            "decode with a codec built with the encoding options"
        )
    for name in ("sal.codes", "sal.scale", "sal.zero"):
        if t[name].numel() == 0:
            t[name] = _placeholder(device, t[name].dtype)
    out = torch.empty(enc.shape, dtype=dtype, device=device)
    check_runnable(_vidkv_values_kernel, device)
    block_t, block_d = decode_tile(tokens, head_dim)
    grid = (heads, triton.cdiv(tokens, block_t))
    _vidkv_values_kernel[grid](
        t["salient"],
        t["tern.codes"],
        t["tern.scale"],
        t["tern.scale_max"],
        t["sal.codes"],
        t["sal.scale"],
        t["sal.zero"],
        t["sal.scale_max"],
        log8_table(device),
        out,
        tokens,
        head_dim,
        n_sal,
        packed_length(tokens, 1),
        packed_length(n_tern * head_dim, None),
        packed_length(n_sal * head_dim, 2),
        tern_groups,
        tern_group,
        sal_groups,
        sal_group,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        **LAUNCH_OPTIONS,
    )
    return out


# keys -----------------------------------------------------------------------------------


@triton.jit
def _vidkv_keys_kernel(
    tier_ptr,
    rank_ptr,
    k4_codes_ptr,
    k4_scale_ptr,
    k4_zero_ptr,
    k4_max_ptr,
    n4,
    k4_bytes,
    k2_codes_ptr,
    k2_scale_ptr,
    k2_zero_ptr,
    k2_max_ptr,
    n2,
    k2_bytes,
    signs_ptr,
    k1_scale_ptr,
    k1_max_ptr,
    m,
    k1_bytes,
    table_ptr,
    out_ptr,
    comps_ptr,
    T,
    D,
    n_groups,
    group,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    # each channel's tier (2: 4-bit, 1: 2-bit, 0: rfft signs) and its rank inside the tier
    tier = tl.load(tier_ptr + h * D + d, mask=d < D, other=-1)
    rank = tl.load(rank_ptr + h * D + d, mask=d < D, other=0)
    live = (t < T) & (d < D)
    g = t // group  # every tier groups tokens the same way

    in4 = live & (tier == 2)
    max4 = tl.load(k4_max_ptr + h, mask=n4 > 0, other=0).to(tl.float32)
    meta4 = (h * n4 + rank) * n_groups + g
    v4 = log8_minmax(
        k4_codes_ptr + h * k4_bytes, k4_scale_ptr, k4_zero_ptr, table_ptr, max4, t * n4 + rank, meta4, in4, 4
    )
    in2 = live & (tier == 1)
    max2 = tl.load(k2_max_ptr + h, mask=n2 > 0, other=0).to(tl.float32)
    meta2 = (h * n2 + rank) * n_groups + g
    v2 = log8_minmax(
        k2_codes_ptr + h * k2_bytes, k2_scale_ptr, k2_zero_ptr, table_ptr, max2, t * n2 + rank, meta2, in2, 2
    )
    tl.store(out_ptr + (h * T + t) * D + d, to_output(tl.where(in4, v4, v2), out_ptr), mask=in4 | in2)

    # sign tier: component `rank` of the rfft, +-level (reference: lowbit.sign_decode)
    in1 = live & (tier == 0)
    bit = load_bits(signs_ptr + h * k1_bytes, t * m + rank, in1, 1)
    max1 = tl.load(k1_max_ptr + h).to(tl.float32)
    level = log8_scale(table_ptr, k1_scale_ptr + (h * m + rank) * n_groups + g, max1, in1)
    comp = (bit.to(tl.float32) * 2.0 - 1.0) * level
    tl.store(comps_ptr + (h * T + t) * m + rank, comp, mask=in1)


# (id of the layer's tier state object, device) -> (a weak reference to it, its channel map on
# the device): the map is computed and moved once per layer, not per block; the weak
# reference tells a reused id apart (as vidkv_cpu.key_channels does)
_MAPS: dict[tuple[int, torch.device], tuple[weakref.ref, tuple]] = {}


def key_channel_map(
    codec: VidKVCodec, layer: int, heads: int, head_dim: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """(tier int8 ``[heads, head_dim]``, rank in tier int32, sign-tier channels ``[heads, m]``,
    channel counts (4-bit, 2-bit, sign)) of ``layer``, from the codec's public shared state,
    the tensors on ``device``; cached per layer state and device."""
    device = torch.device(device)
    # the object holding the layer's tiers: packed as loaded, or frozen once the codec unpacked them
    state = codec._pending.get(layer, codec._tiers.get(layer))
    key = (id(state), device)
    cached = _MAPS.get(key)
    if state is not None and cached is not None and cached[0]() is state:
        if tuple(cached[1][0].shape) == (heads, head_dim):
            return cached[1]
    tiers, rank, sign_idx, counts = _channel_map(codec, layer, heads, head_dim)
    result = (tiers.to(device), rank.to(device), sign_idx.to(device), counts)
    _MAPS[key] = (weakref.ref(state, lambda _: _MAPS.pop(key, None)), result)
    return result


def _channel_map(
    codec: VidKVCodec, layer: int, heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    state = codec.shared_state(layer)
    if not state:
        raise QuantError(
            f"{codec.name}: no key channel tiers for layer {layer}; "
            "load them with load_shared_state(layer, ...) before decoding"
        )
    packed = state["tiers"]
    if packed.shape != (heads, packed_length(head_dim, 2)):
        raise QuantError(
            f"{codec.name}: layer {layer} was calibrated for another heads x head_dim than "
            f"{(heads, head_dim)}; use one codec per model (or call reset())"
        )
    # on the CPU, where the codec keeps its state: reading the counts costs no device sync
    tiers = unpack_per_head(packed, 2, (heads, head_dim)).to(torch.int8)
    rank = torch.zeros(heads, head_dim, dtype=torch.int32)
    for tier in (0, 1, 2):
        sel = tiers == tier
        rank = torch.where(sel, sel.cumsum(1, dtype=torch.int32) - 1, rank)
    counts = tuple(int((tiers[0] == tier).sum()) for tier in (2, 1, 0))
    return tiers, rank, tier_indices(tiers, 0, counts[2]), counts


def decode_keys(
    enc: EncodedTensor, codec: VidKVCodec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``codec.decode(enc, device, dtype)`` for a key block: Triton kernel, then irfft in torch."""
    heads, tokens, head_dim = enc.shape
    tiers, rank, sign_idx, (n4, n2, m) = key_channel_map(codec, enc.layer, heads, head_dim, device)
    t = to_device(enc.tensors, device)
    group = balanced_group(tokens, codec.group_size)
    n_groups = num_groups(tokens, group)
    if t["k1.scale"].shape[-1] != n_groups:
        raise QuantError(
            f"{codec.name}: encoded with another group_size than {codec.group_size}; "
            "decode with a codec built with the encoding options"
        )
    tier_args = []
    for bits, n in ((4, n4), (2, n2)):
        names = [f"k{bits}.{part}" for part in ("codes", "scale", "zero", "scale_max")]
        if n and not all(name in t for name in names):
            raise QuantError(f"{codec.name}: key block lacks the {bits}-bit tier the layer's tiers call for")
        dtypes = (torch.uint8, torch.uint8, torch.int8, torch.bfloat16)
        tensors = [t[name] if n else _placeholder(device, dt) for name, dt in zip(names, dtypes, strict=True)]
        tier_args += [*tensors, n, packed_length(tokens * n, bits)]
    out = torch.empty(enc.shape, dtype=dtype, device=device)
    comps = torch.empty(heads, tokens, m, dtype=torch.float32, device=device)
    check_runnable(_vidkv_keys_kernel, device)
    block_t, block_d = decode_tile(tokens, head_dim)
    grid = (heads, triton.cdiv(tokens, block_t))
    _vidkv_keys_kernel[grid](
        tiers,
        rank,
        *tier_args,
        t["k1.signs"],
        t["k1.scale"],
        t["k1.scale_max"],
        m,
        packed_length(tokens * m, 1),
        log8_table(device),
        out,
        comps,
        tokens,
        head_dim,
        n_groups,
        group,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        **LAUNCH_OPTIONS,
    )
    signal = from_rfft_components(comps, m).to(dtype)
    return out.scatter_(2, channel_rows(sign_idx, tokens), signal)
