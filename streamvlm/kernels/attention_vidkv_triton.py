"""Fused attention over packed ``vidkv`` blocks: scores and ``p @ V`` read the stored bits.

No decoded key or value tensor is ever written. Each program takes one KV head, a block of
query rows (all the query heads that share the KV head, times the queries) and a run of
token tiles; per tile it decodes keys and values in registers from the packed codes and
their log8 metadata, forms the scores with ``tl.dot``, and keeps an online softmax
(flash-decoding). Its partial result (running max, sum of exponentials, weighted value
sum) is combined with the other programs', other blocks' and any dense tokens' in torch
(``attention.combine_partials``).

Keys without the inverse rfft. The sign tier stores the ``m`` real rfft components of a
token's sign-tier channels, ``k_sign = comps @ B`` with ``B`` the ``[m, m]`` inverse-rfft
basis (row ``j`` is ``from_rfft_components`` of the unit component ``j``). Since
``q_sign . (comps @ B) = (q_sign @ B^T) . comps``, each query's sign-tier channels are
transformed once on the host side (``tier_queries``: a ``[rows, m] x [m, m]`` product per
head, with the softmax scale folded in), and the queries' channels are put in tier order
(4-bit, 2-bit, sign components). The kernel then scores a token tile as three ``tl.dot``s,
one per tier, each over a sub-tile decoded by that tier's code alone: log8 min-max codes
for the uniform tiers, ``+-level`` for the sign tier. No FFT, no ``[tokens, m]`` buffer, no
channel scatter.

Values: ternary tokens as ``trit x level`` per channel and group, salient tokens (2-bit
per token) in the same tile, each token's row found from the 1-bit salient mask by a
prefix count (as ``_vidkv_values_kernel`` does), carried from tile to tile.

Not bit-exact with decode-then-attend (the sums run in another order, the sign tier goes
through ``B^T q`` instead of ``irfft``, ``exp`` differs by an ulp): the tests compare with
the reference (``attention.decode_then_attend``) within a tolerance.

HBM traffic at Qwen2.5-VL-7B geometry (28 layers, 4 KV heads, head_dim 128, 8 retrieved
blocks of 720 tokens; ``attention.traffic_model``, docs/quantization.md "Fused attention
over packed blocks"): per generated token the fused path reads 39.5 MB of packed KV (plus
at most 19.6 MB of partials, which fit in L2) where attention over the decoded bf16 cache
reads 330 MB, and it skips the 1.96 GB that decoding the blocks moves once per question
(mostly the torch irfft's float32 intermediates). But the loop is instruction-bound:
~185 PTX instructions per key-and-value element on sm_90, an estimated ~0.5 ms per decode
step at that geometry against ~0.1 ms to read the bf16 cache (no GPU timing yet).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..quant.base import EncodedTensor, QuantError
from ..quant.groups import balanced_group, num_groups
from ..quant.packing import packed_length
from ..quant.selection import channel_rows, tier_indices
from ..quant.spectral import from_rfft_components
from ..quant.vidkv import VidKVCodec
from .backend import check_runnable
from .partials import PartialAttention
from .tiles import next_power_of_2
from .triton_common import load_bits, load_trits, log8_minmax, log8_scale
from .vidkv_triton import key_channel_map, log8_table

# Token tile of one loop step (>= 16 for tl.dot). The sm_90 PTX count per key-and-value
# element barely moves with it (185 at 32 tokens and 4 warps, 188 at 16, 189 at 64).
BLOCK_T = 32
# Query rows per program at most (rows beyond it get more programs): a decode step has
# heads-per-KV-head rows (7 at Qwen2.5-VL-7B), a question's prefill a few dozen.
MAX_BLOCK_Q = 64
# One software-pipeline stage: the loop's loads are gathers that pipelining cannot prefetch
# as tiles, and at Triton's default of 3 stages the attention kernel asks for 127 KB of
# shared memory (sm_90 compile; 27 KB at 1). FMA contraction on: the result is compared
# within a tolerance, not bit for bit, and naming it keeps it off Triton's default (3.10
# changes it).
LAUNCH_OPTIONS = {"num_stages": 1, "enable_fp_fusion": True}
# Default tokens per program. At 7B geometry: 96 programs per layer (4 KV heads x 8 blocks x
# 3), each writing a 3.6 KB partial after reading ~15.7 KB of packed KV. Untuned: no GPU
# was available to time it.
TOKENS_PER_PROGRAM = 256


# device helpers ---------------------------------------------------------------------------


@triton.jit
def _tier_queries(q_ptr, h, r, R, D, offset, n, BLOCK_C: tl.constexpr):
    """Query rows ``r`` of KV head ``h``, columns ``[offset, offset + n)`` of ``tier_queries`` (0 beyond)."""
    c = tl.arange(0, BLOCK_C)[None, :]
    return tl.load(q_ptr + (h * R + r) * D + offset + c, mask=(r < R) & (c < n), other=0.0)


@triton.jit
def _uniform_tier_scores(
    q,
    codes_ptr,
    scale_ptr,
    zero_ptr,
    max_ptr,
    n,
    row_bytes,
    h,
    t,
    T,
    table_ptr,
    n_groups,
    group,
    BITS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``q @ k^T`` over one uniform key tier: channel ``c`` of the tier at rank ``c``, log8 min-max
    per channel in groups of tokens (reference: ``VidKVCodec._decode_keys``, ``decode_log8_minmax``)."""
    c = tl.arange(0, BLOCK_C)[None, :]
    live = (t < T) & (c < n)
    head_max = tl.load(max_ptr + h, mask=n > 0, other=0).to(tl.float32)
    meta = (h * n + c) * n_groups + t // group
    k = log8_minmax(
        codes_ptr + h * row_bytes, scale_ptr, zero_ptr, table_ptr, head_max, t * n + c, meta, live, BITS
    )
    return tl.dot(q, tl.trans(k), input_precision="ieee")


@triton.jit
def _sign_tier_scores(
    q, signs_ptr, scale_ptr, max_ptr, m, row_bytes, h, t, T, table_ptr, n_groups, group, BLOCK_C: tl.constexpr
):
    """``q @ comps^T`` over the sign tier's rfft components (``+-level``, reference:
    ``lowbit.sign_decode``); ``q`` holds the queries' transformed sign-tier channels."""
    c = tl.arange(0, BLOCK_C)[None, :]
    live = (t < T) & (c < m)
    bit = load_bits(signs_ptr + h * row_bytes, t * m + c, live, 1)
    head_max = tl.load(max_ptr + h).to(tl.float32)
    level = log8_scale(table_ptr, scale_ptr + (h * m + c) * n_groups + t // group, head_max, live)
    comp = (bit.to(tl.float32) * 2.0 - 1.0) * level
    return tl.dot(q, tl.trans(comp), input_precision="ieee")


@triton.jit
def _salient_before(mask_row, first, T, BLOCK_T: tl.constexpr):
    """Salient tokens among tokens ``[0, first)`` of one head (bits of its salient mask)."""
    count = tl.zeros([], dtype=tl.int32)
    for start in range(0, first, BLOCK_T):
        tb = start + tl.arange(0, BLOCK_T)
        count += tl.sum(load_bits(mask_row, tb, tb < T, 1), axis=0)
    return count


@triton.jit
def _value_tile(
    h,
    t1,
    d,
    before,
    T,
    D,
    sal_ptr,
    tern_ptr,
    tern_scale_ptr,
    tern_max_ptr,
    sal_codes_ptr,
    sal_scale_ptr,
    sal_zero_ptr,
    sal_max_ptr,
    table_ptr,
    n_sal,
    mask_bytes,
    tern_bytes,
    sal_bytes,
    tern_groups,
    tern_group,
    sal_groups,
    sal_group,
):
    """(values ``[t1, d]`` of head ``h`` in float32, 0 outside the block; salient tokens up to
    the tile's end), given ``before`` salient tokens ahead of the tile.

    Reference: ``VidKVCodec._decode_values`` (and ``_vidkv_values_kernel``, same loads).
    """
    flag = load_bits(sal_ptr + h * mask_bytes, t1, t1 < T, 1)
    upto = before + tl.cumsum(flag, axis=0)  # salient tokens in [0, t]
    sal_row = (upto - 1)[:, None]
    tern_row = (t1 - upto)[:, None]
    t = t1[:, None]
    live = (t < T) & (d < D)
    is_sal = live & (flag[:, None] != 0)
    is_tern = live & (flag[:, None] == 0)

    trit = load_trits(tern_ptr + h * tern_bytes, tern_row * D + d, is_tern)
    tern_max = tl.load(tern_max_ptr + h).to(tl.float32)
    level = log8_scale(
        table_ptr, tern_scale_ptr + (h * D + d) * tern_groups + tern_row // tern_group, tern_max, is_tern
    )
    v_tern = tl.where(is_tern, (trit - 1).to(tl.float32) * level, 0.0)

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
    return tl.where(is_sal, v_sal, v_tern), before + tl.sum(flag, axis=0)


# kernels ----------------------------------------------------------------------------------


@triton.jit
def _key_scores(
    q_ptr,
    h,
    r,
    t,
    R,
    T,
    D,
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
    n_groups,
    group,
    B4: tl.constexpr,
    B2: tl.constexpr,
    B1: tl.constexpr,
):
    """Scores ``[rows r, tokens t]`` of ``tier_queries`` rows against head ``h``'s packed keys.

    One sub-tile per tier, so each key element is decoded by its own tier's code only.
    (The queries are reloaded per tile: they stay in L1, and holding three query tiles
    across the loop would cost registers the decode needs.)
    """
    s = _uniform_tier_scores(
        _tier_queries(q_ptr, h, r, R, D, 0, n4, B4),
        k4_codes_ptr,
        k4_scale_ptr,
        k4_zero_ptr,
        k4_max_ptr,
        n4,
        k4_bytes,
        h,
        t,
        T,
        table_ptr,
        n_groups,
        group,
        4,
        B4,
    )
    s += _uniform_tier_scores(
        _tier_queries(q_ptr, h, r, R, D, n4, n2, B2),
        k2_codes_ptr,
        k2_scale_ptr,
        k2_zero_ptr,
        k2_max_ptr,
        n2,
        k2_bytes,
        h,
        t,
        T,
        table_ptr,
        n_groups,
        group,
        2,
        B2,
    )
    s += _sign_tier_scores(
        _tier_queries(q_ptr, h, r, R, D, n4 + n2, m, B1),
        signs_ptr,
        k1_scale_ptr,
        k1_max_ptr,
        m,
        k1_bytes,
        h,
        t,
        T,
        table_ptr,
        n_groups,
        group,
        B1,
    )
    return s


@triton.jit
def _packed_scores_kernel(
    q_ptr,
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
    R,
    T,
    D,
    n_groups,
    group,
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
    B4: tl.constexpr,
    B2: tl.constexpr,
    B1: tl.constexpr,
):
    # program: KV head, block of query rows, token tile -> scores [rows, tokens] of the tile
    h = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)[:, None]
    t1 = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    s = _key_scores(
        q_ptr,
        h,
        r,
        t1[:, None],
        R,
        T,
        D,
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
        n_groups,
        group,
        B4,
        B2,
        B1,
    )
    t = t1[None, :]
    tl.store(out_ptr + (h * R + r) * T + t, s, mask=(r < R) & (t < T))


@triton.jit
def _packed_attention_kernel(
    q_ptr,
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
    sal_ptr,
    tern_ptr,
    tern_scale_ptr,
    tern_max_ptr,
    sal_codes_ptr,
    sal_scale_ptr,
    sal_zero_ptr,
    sal_max_ptr,
    n_sal,
    mask_bytes,
    tern_bytes,
    sal_bytes,
    tern_groups,
    tern_group,
    sal_groups,
    sal_group,
    table_ptr,
    max_ptr,
    sumexp_ptr,
    weighted_ptr,
    R,
    T,
    D,
    n_groups,
    group,
    tiles_per_program,
    splits,
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    B4: tl.constexpr,
    B2: tl.constexpr,
    B1: tl.constexpr,
):
    # program: KV head, block of query rows, run of `tiles_per_program` token tiles
    h = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    split = tl.program_id(2)
    d = tl.arange(0, BLOCK_D)[None, :]
    first = split * tiles_per_program * BLOCK_T
    before = _salient_before(sal_ptr + h * mask_bytes, first, T, BLOCK_T)

    # online softmax; every program's first tile holds a token, so the max is finite after it
    row_max = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    sumexp = tl.zeros([BLOCK_Q], dtype=tl.float32)
    weighted = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for i in range(tiles_per_program):
        t1 = first + i * BLOCK_T + tl.arange(0, BLOCK_T)
        s = _key_scores(
            q_ptr,
            h,
            r[:, None],
            t1[:, None],
            R,
            T,
            D,
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
            n_groups,
            group,
            B4,
            B2,
            B1,
        )
        s = tl.where(t1[None, :] < T, s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        rescale = tl.exp(row_max - new_max)
        p = tl.exp(s - new_max[:, None])
        v, before = _value_tile(
            h,
            t1,
            d,
            before,
            T,
            D,
            sal_ptr,
            tern_ptr,
            tern_scale_ptr,
            tern_max_ptr,
            sal_codes_ptr,
            sal_scale_ptr,
            sal_zero_ptr,
            sal_max_ptr,
            table_ptr,
            n_sal,
            mask_bytes,
            tern_bytes,
            sal_bytes,
            tern_groups,
            tern_group,
            sal_groups,
            sal_group,
        )
        sumexp = sumexp * rescale + tl.sum(p, axis=1)
        weighted = weighted * rescale[:, None] + tl.dot(p, v, input_precision="ieee")
        row_max = new_max

    out = (h * splits + split) * R + r
    tl.store(max_ptr + out, row_max, mask=r < R)
    tl.store(sumexp_ptr + out, sumexp, mask=r < R)
    tl.store(weighted_ptr + out[:, None] * D + d, weighted, mask=(r[:, None] < R) & (d < D))


# host side --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _irfft_basis(m: int, device: torch.device) -> torch.Tensor:
    # row j: the m channels that rfft component j alone decodes to, by the reference's own
    # inverse (linear, so any component vector decodes to comps @ basis)
    return from_rfft_components(torch.eye(m), m).to(device)


def tier_queries(rows: torch.Tensor, codec: VidKVCodec, layer: int, scale: float) -> torch.Tensor:
    """Query rows ``[kv_heads, rows, head_dim]`` as the fused kernels read them (float32).

    Scaled by ``scale``, channels in tier order per KV head: the 4-bit channels, then the
    2-bit ones (each by rank: ascending channel index), then ``q_sign @ B^T`` (``B`` the
    inverse-rfft basis) in place of the sign-tier channels, component ``j`` at column
    ``n4 + n2 + j``. The tiers are the layer's, read through ``codec.shared_state``: one call
    serves every block of the layer.
    """
    kv_heads, n_rows, head_dim = rows.shape
    tiers, _, sign_idx, (n4, n2, m) = key_channel_map(codec, layer, kv_heads, head_dim)
    order = torch.cat([tier_indices(tiers, 2), tier_indices(tiers, 1), sign_idx], dim=1)
    ordered = (rows.float() * scale).gather(2, channel_rows(order.to(rows.device), n_rows))
    sign = slice(n4 + n2, head_dim)
    ordered[..., sign] = ordered[..., sign] @ _irfft_basis(m, rows.device).T
    return ordered


def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # stands in for an absent tensor (no salient tokens, no 4-bit tier): never read
    return torch.zeros(1, dtype=dtype, device=device)


def _group_mismatch(codec: VidKVCodec) -> QuantError:
    return QuantError(
        f"{codec.name}: encoded with another group_size than {codec.group_size}; "
        "attend with a codec built with the encoding options"
    )


def _key_args(enc: EncodedTensor, codec: VidKVCodec, device: torch.device) -> tuple[list, list, dict]:
    """(arguments ``k4_codes_ptr`` to ``k1_bytes``; ``n_groups, group``; tier block sizes) of a key block."""
    heads, tokens, head_dim = enc.shape
    _, _, _, (n4, n2, m) = key_channel_map(codec, enc.layer, heads, head_dim)
    t = {name: x.to(device).contiguous() for name, x in enc.tensors.items()}
    group = balanced_group(tokens, codec.group_size)
    n_groups = num_groups(tokens, group)
    if t["k1.scale"].shape[-1] != n_groups:
        raise _group_mismatch(codec)
    args: list = []
    dtypes = (torch.uint8, torch.uint8, torch.int8, torch.bfloat16)
    for bits, n in ((4, n4), (2, n2)):
        names = [f"k{bits}.{part}" for part in ("codes", "scale", "zero", "scale_max")]
        if n and not all(name in t for name in names):
            raise QuantError(f"{codec.name}: key block lacks the {bits}-bit tier the layer's tiers call for")
        args += [t[name] if n else _placeholder(device, dt) for name, dt in zip(names, dtypes, strict=True)]
        args += [n, packed_length(tokens * n, bits)]
    args += [t["k1.signs"], t["k1.scale"], t["k1.scale_max"], m, packed_length(tokens * m, 1)]
    # tier widths as tl.dot operands: powers of two, >= 16
    blocks = {f"B{bits}": max(16, next_power_of_2(n)) for bits, n in ((4, n4), (2, n2), (1, m))}
    return args, [n_groups, group], blocks


def _value_args(enc: EncodedTensor, codec: VidKVCodec, device: torch.device) -> list:
    """Arguments from ``sal_ptr`` to ``sal_group`` of a value block."""
    _, tokens, head_dim = enc.shape
    t = {name: x.to(device).contiguous() for name, x in enc.tensors.items()}
    n_sal = t["sal.scale"].shape[1]
    n_tern = tokens - n_sal
    tern_group = balanced_group(n_tern, codec.group_size)
    sal_group = balanced_group(head_dim, codec.group_size)
    tern_groups, sal_groups = t["tern.scale"].shape[-1], t["sal.scale"].shape[-1]
    if tern_groups != num_groups(n_tern, tern_group) or sal_groups != num_groups(head_dim, sal_group):
        raise _group_mismatch(codec)
    for name in ("sal.codes", "sal.scale", "sal.zero"):
        if t[name].numel() == 0:
            t[name] = _placeholder(device, t[name].dtype)
    names = ("salient", "tern.codes", "tern.scale", "tern.scale_max")
    names += ("sal.codes", "sal.scale", "sal.zero", "sal.scale_max")
    return [t[name] for name in names] + [
        n_sal,
        packed_length(tokens, 1),
        packed_length(n_tern * head_dim, None),
        packed_length(n_sal * head_dim, 2),
        tern_groups,
        tern_group,
        sal_groups,
        sal_group,
    ]


def _block_q(n_rows: int) -> int:
    return min(MAX_BLOCK_Q, max(16, next_power_of_2(n_rows)))  # tl.dot wants >= 16


def packed_scores(queries: torch.Tensor, key_enc: EncodedTensor, codec: VidKVCodec) -> torch.Tensor:
    """float32 scores ``[kv_heads, rows, tokens]`` of ``tier_queries`` rows against a packed key block."""
    kv_heads, n_rows, head_dim = queries.shape
    tokens = key_enc.shape[1]
    key_args, grouping, tier_blocks = _key_args(key_enc, codec, queries.device)
    out = torch.empty(kv_heads, n_rows, tokens, dtype=torch.float32, device=queries.device)
    check_runnable(_packed_scores_kernel, queries.device)
    block_q = _block_q(n_rows)
    grid = (kv_heads, triton.cdiv(n_rows, block_q), triton.cdiv(tokens, BLOCK_T))
    _packed_scores_kernel[grid](
        queries.contiguous(),
        *key_args,
        log8_table(queries.device),
        out,
        n_rows,
        tokens,
        head_dim,
        *grouping,
        BLOCK_Q=block_q,
        BLOCK_T=BLOCK_T,
        **tier_blocks,
        **LAUNCH_OPTIONS,
    )
    return out


def packed_partial(
    queries: torch.Tensor,
    key_enc: EncodedTensor,
    value_enc: EncodedTensor,
    codec: VidKVCodec,
    tokens_per_program: int = TOKENS_PER_PROGRAM,
) -> PartialAttention:
    """Softmax attention of ``tier_queries`` rows over one packed block, one partial per program."""
    kv_heads, n_rows, head_dim = queries.shape
    device = queries.device
    tokens = key_enc.shape[1]
    key_args, grouping, tier_blocks = _key_args(key_enc, codec, device)
    value_args = _value_args(value_enc, codec, device)
    tiles = triton.cdiv(tokens, BLOCK_T)
    tiles_per_program = max(1, min(tiles, tokens_per_program // BLOCK_T))
    splits = triton.cdiv(tiles, tiles_per_program)
    row_max = torch.empty(kv_heads, splits, n_rows, dtype=torch.float32, device=device)
    sumexp = torch.empty_like(row_max)
    weighted = torch.empty(kv_heads, splits, n_rows, head_dim, dtype=torch.float32, device=device)
    check_runnable(_packed_attention_kernel, device)
    block_q = _block_q(n_rows)
    grid = (kv_heads, triton.cdiv(n_rows, block_q), splits)
    _packed_attention_kernel[grid](
        queries.contiguous(),
        *key_args,
        *value_args,
        log8_table(device),
        row_max,
        sumexp,
        weighted,
        n_rows,
        tokens,
        head_dim,
        *grouping,
        tiles_per_program,
        splits,
        BLOCK_Q=block_q,
        BLOCK_T=BLOCK_T,
        BLOCK_D=next_power_of_2(head_dim),
        **tier_blocks,
        **LAUNCH_OPTIONS,
    )
    return PartialAttention(row_max, sumexp, weighted)
