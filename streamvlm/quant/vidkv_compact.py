"""vidkv's compact layout: blocks of fewer tokens than ``group_size`` (pruned blocks, short chunks).

Why another layout: the standard one keeps a scale (and zero point) per channel per group of
tokens, so its metadata per element grows as ``1 / tokens`` below ``group_size``: 2.33 bits
per element at 16 tokens of the tiny model, 3.7-4.4 on pruned blocks of a few tokens, ~16
bits at one token. Here metadata is per *head* and per run of tokens instead, made possible
by a per-layer **channel profile**:

* the profile is one log8 byte per (head, channel) of that channel's typical magnitude
  (root mean square over the calibration sample; for the rfft sign tier, of each rfft
  component), with one bf16 anchor per head. It is frozen with the key channel tiers and
  stored once per layer (``vidkv``'s ``shared_state``), not in blocks. Divided by their
  profile, all channels of a head have magnitudes near 1, so one group may span channels.
* keys, uniform tiers (the 4-bit and the 2-bit channels together): per head and run of
  tokens, one min-max range over the profile-normalised elements of both tiers, stored as a
  step (``gain`` byte, below) and an int8 zero point in quarter steps of the 2-bit grid; the
  4-bit grid divides the same range in 15. A run holds ``ceil(group_size / uniform
  channels)`` tokens (one token at head_dim 128, two at head_dim 32): groups of about
  ``group_size`` elements, like the standard layout's, so the min-max range (which grows with
  the group) stays as tight.
* keys, sign tier: the rfft components divided by their profile, one sign bit each, one
  least-squares level for the whole tensor.
* values: ternary over profile-normalised elements (threshold ``ternary_threshold`` times the
  tensor's mean ``|v / profile|``), one least-squares level for the whole tensor; no salient
  tokens (at under ``group_size`` tokens their mask and metadata would cost more than the
  0.2 bit per element they would spend in the standard layout, for at most one token).
* channel offsets, from ``OFFSET_MIN_TOKENS`` tokens: a 4-bit mean per channel, subtracted
  before the groups above (why: at ``OFFSET_BITS``).
* a ``gain`` byte is a log8 ratio to the profile, ``2 ** ((code - 128) / 16)`` (code 0: exactly
  zero), so a block needs no bf16 anchor of its own: 16 steps per octave, 8 octaves each way.

Bits per element (``H`` heads, ``D`` head_dim, tier widths ``n4, n2, m``, ``R`` runs per head;
everything per block counted, each code tensor padded to a byte; checked by
tests/test_quant_compact.py)::

    keys   = [H T (4 n4 + 2 n2 + m) + 16 H R + 8  (+ 4 H D from 12 tokens)] / (H T D)
    values = [8 ceil(H T D / 5)     + 8          (+ 4 H D from 8 tokens)]  / (H T D)

    head_dim 32, 2 heads (n4 1, n2 15, m 16; 2-token runs)       K      V      K+V
      1 token                                                  2.250  1.750  2.000
      4 tokens                                                 1.844  1.656  1.750
      12 tokens (the worst)                                    2.156  1.948  2.052
      16 tokens                                                2.070  1.859  1.965
    head_dim 128, 4 heads (n4 4, n2 60, m 64; 1-token runs)
      1 token                                                  1.703  1.625  1.664
      4 tokens                                                 1.691  1.605  1.648
      12 tokens (the worst)                                    2.020  1.935  1.979

The profiles are per-layer state, reported by ``shared_bits`` like the channel tiers: ``(8 * (D +
m) + 16) * H`` bits for keys, ``(8 * D + 16) * H`` for values (1472 bits per layer with the tiers
at head_dim 32, 2 heads; 11392 at 128, 4 heads).
"""

from __future__ import annotations

import torch

from .constants import DeviceConstant
from .groups import balanced_group, group_sum, to_groups
from .packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from .scales import decode_log8, encode_log8
from .selection import channel_rows, tier_indices
from .spectral import from_rfft_components, rfft_components

PREFIX = "c."  # tensor names of the compact layout; the standard layout never starts with it
GAIN_STEPS_PER_OCTAVE = 16
_GAIN_ONE = 128  # the code of a ratio of exactly 1
# Calibration samples this short are shrunk towards the tier's mean (see ``profile_rms``).
PROFILE_PRIOR_TOKENS = 4
# A channel's profile never drops below this fraction of its head's largest: an all-zero
# calibration channel must not make later normalised values infinite.
_PROFILE_FLOOR = 2.0**-12
ZERO_UNITS = 4  # zero point resolution: quarter steps of the 2-bit grid (as ``uniform.py`` at 2 bits)


def is_compact(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether an encoded tensor's fields are in the compact layout."""
    return any(name.startswith(PREFIX) for name in tensors)


# gains: log8 ratios to the profile ----------------------------------------------------
# Decoding is a table lookup and encoding compares with float64 boundaries, like ``scales.py``
# (not a float32 ``log2``/``exp2``, whose last bit differs between libraries): every
# implementation (``kernels/vidkv_compact_cpu.py``) picks the same code and decodes the same float.
_GAIN_EXPONENTS = (torch.arange(256, dtype=torch.float64) - _GAIN_ONE) / GAIN_STEPS_PER_OCTAVE
GAIN_TABLE = DeviceConstant(torch.where(torch.arange(256) > 0, torch.exp2(_GAIN_EXPONENTS), 0.0).float())
# ascending float64 boundaries; a ratio's code is 1 + how many lie below it (round up: the
# exact gains of codes 1 .. 254, "below" strictly) or at or below it (nearest: the geometric
# midpoints between codes 1 .. 255)
GAIN_BOUNDS = {
    True: DeviceConstant(torch.exp2(_GAIN_EXPONENTS[1:255])),
    False: DeviceConstant(torch.exp2(_GAIN_EXPONENTS[2:256] - 0.5 / GAIN_STEPS_PER_OCTAVE)),
}


def encode_gain(g: torch.Tensor, round_up: bool) -> torch.Tensor:
    """Ratios ``g`` (>= 0) -> uint8 codes; ``round_up`` never decodes below ``g`` (steps: no clipping)."""
    g = g.float()
    bounds = GAIN_BOUNDS[round_up].on(g.device)
    code = torch.searchsorted(bounds, g.double().contiguous(), side="left" if round_up else "right") + 1
    return torch.where(g > 0, code, torch.zeros_like(code)).to(torch.uint8)


def decode_gain(code: torch.Tensor) -> torch.Tensor:
    return GAIN_TABLE.on(code.device)[code.long()]


# the channel profile ---------------------------------------------------------------------
def profile_rms(x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Typical magnitude ``[heads, channels]`` of ``x`` ``[heads, tokens, channels]``.

    Root mean square over tokens, shrunk towards the mean square of the channel's group
    (``groups`` int ``[heads, channels]``, e.g. key tiers; all one group if None) as if
    ``PROFILE_PRIOR_TOKENS`` tokens at that mean had been seen too: a profile calibrated on a
    block of one or two tokens is then mostly the group's level (one scale per head, the
    safe guess) instead of a single sample's accidents, and a long sample is its own.
    """
    tokens = x.shape[1]
    ms = x.float().square().mean(dim=1)
    groups = torch.zeros_like(ms, dtype=torch.long) if groups is None else groups.long()
    prior = torch.zeros_like(ms)
    for g in groups.unique().tolist():
        sel = groups == g
        # every head has the same count per group (tiers are per head with fixed counts)
        mean = (ms * sel).sum(dim=1, keepdim=True) / sel.sum(dim=1, keepdim=True).clamp_min(1)
        prior = torch.where(sel, mean.expand_as(ms), prior)
    return ((tokens * ms + PROFILE_PRIOR_TOKENS * prior) / (tokens + PROFILE_PRIOR_TOKENS)).sqrt()


def encode_profile(rms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[heads, channels]`` magnitudes -> (uint8 log8 codes, bf16 per-head anchor), floored (never 0)."""
    floor = rms.amax(dim=1, keepdim=True) * _PROFILE_FLOOR
    rms = torch.maximum(rms, floor)
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))  # an all-zero head: any positive profile
    return encode_log8(rms, round_up=False)


def decode_profile(codes: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    return decode_log8(codes, anchor)


def key_profile(keys: torch.Tensor, tiers: torch.Tensor) -> torch.Tensor:
    """Key profile ``[heads, head_dim + m]``: every channel's magnitude, then that of the sign
    tier's rfft components 0 .. m-1 (the sign tier is quantized in that domain)."""
    tokens = keys.shape[1]
    comps = rfft_components(keys.float().gather(2, channel_rows(tier_indices(tiers, 0), tokens)))
    return torch.cat([profile_rms(keys.float(), tiers), profile_rms(comps)], dim=1)


def profile_width(kind: str, head_dim: int, tiers: torch.Tensor | None) -> int:
    """Entries per head of a ``kind`` profile (keys: channels and sign-tier components)."""
    return head_dim + (int((tiers[0] == 0).sum()) if kind == "key" and tiers is not None else 0)


# per-channel block offsets ----------------------------------------------------------------
# Keys of one block sit at nearly the same RoPE angle (and show one scene), so a channel's
# values inside a block cluster around an offset that moves from block to block by more than
# their spread inside it (tiny model: ~2 vs ~0.4 in profile units). A range spanning channels
# then spends its levels on the offsets; removing them first leaves only the spread. They cost
# OFFSET_BITS per channel, i.e. OFFSET_BITS / tokens per element: paid only from
# OFFSET_MIN_TOKENS tokens on (<= 0.5 bit per element).
OFFSET_BITS = 4
# values first: on the tiny model their offsets halve the attention output error (0.33 -> 0.18
# at 16 tokens), the keys' take it 0.125 -> 0.108; both from 8 tokens would cost 2.23 bits
OFFSET_MIN_TOKENS = {"key": 12, "value": 8}
OFFSET_UNIT = 0.25  # of the channel's profile: offsets up to +-2 profiles, error <= 1/8


def uses_offsets(tokens: int, kind: str) -> bool:
    return tokens >= OFFSET_MIN_TOKENS[kind]


def encode_offsets(x: torch.Tensor, prof: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed 4-bit codes, decoded offsets ``[heads, channels]``) of the per-channel means of ``x``."""
    half = 1 << (OFFSET_BITS - 1)
    mean = group_sum(x.transpose(1, 2)) / x.shape[1]
    code = (mean / (prof * OFFSET_UNIT)).round().clamp(-half, half - 1)
    return pack_bits((code + half).reshape(1, -1).to(torch.uint8), OFFSET_BITS), code * prof * OFFSET_UNIT


def decode_offsets(packed: torch.Tensor, prof: torch.Tensor) -> torch.Tensor:
    half = 1 << (OFFSET_BITS - 1)
    code = unpack_bits(packed, OFFSET_BITS, prof.numel()).view(prof.shape).float() - half
    return code * prof * OFFSET_UNIT


def _mean_abs(x: torch.Tensor) -> torch.Tensor:
    """``[1]``: mean ``|x|`` over all of ``x``, summed in its element order (``groups.group_sum``)."""
    return group_sum(x.abs().flatten()).view(1) / x.numel()


# keys -------------------------------------------------------------------------------------
def run_tokens(tokens: int, uniform_channels: int, group_size: int) -> int:
    """Tokens per run of the uniform tiers: about ``group_size`` elements per (head, run)."""
    return balanced_group(tokens, -(-group_size // max(1, uniform_channels)))


def tier_channels(tiers: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each tier's channel indices ``[heads, count]`` (0: rfft signs, 1: 2-bit, 2: 4-bit)."""
    return {tier: tier_indices(tiers, tier) for tier in (0, 1, 2)}


def encode_keys(
    x: torch.Tensor, channels: dict[int, torch.Tensor], prof: torch.Tensor, group_size: int
) -> dict:
    """Compact key fields of ``x`` ``[heads, tokens, head_dim]`` (float32) given the layer's tier
    channels (``tier_channels``) and decoded profile ``[heads, head_dim]``, on ``x``'s device."""
    heads, tokens, head_dim = x.shape
    prof, comp_prof = prof[:, :head_dim], prof[:, head_dim:]
    out: dict[str, torch.Tensor] = {}
    if uses_offsets(tokens, "key"):
        out[f"{PREFIX}offset"], offsets = encode_offsets(x, prof)
        x = x - offsets[:, None, :]
    idx4, idx2 = channels[2], channels[1]
    idx_u = torch.cat([idx4, idx2], dim=1)
    if idx_u.shape[1]:
        xu = x.gather(2, channel_rows(idx_u, tokens)) / prof.gather(1, idx_u)[:, None, :]
        run = run_tokens(tokens, idx_u.shape[1], group_size)
        xg, valid = to_groups(xu.transpose(1, 2), run)  # [heads, channels, runs, run]
        v = valid.expand_as(xg)
        mn = xg.masked_fill(~v, float("inf")).amin(dim=(1, 3))  # [heads, runs]
        mx = xg.masked_fill(~v, float("-inf")).amax(dim=(1, 3))
        # The zero point is floored, so it may sit up to a quarter step below the minimum: the
        # step covers the range plus that quarter (3 - 1/4 steps span it); it is also large
        # enough for |min| to fit int8 quarter steps. Rounded up: nothing is ever clipped.
        step = torch.maximum((mx - mn) / (3 - 1 / ZERO_UNITS), mn.abs() * ZERO_UNITS / 127)
        step_code = encode_gain(step, round_up=True)
        s = decode_gain(step_code)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        zero = torch.floor(mn / safe * ZERO_UNITS).clamp(-128, 127)
        low = (zero / ZERO_UNITS * s)[:, None, :, None]
        for bits, levels, part in ((4, 15, slice(0, idx4.shape[1])), (2, 3, slice(idx4.shape[1], None))):
            width = (safe * 3 / levels)[:, None, :, None]
            q = ((xg[:, part] - low) / width).round().clamp(0, levels)
            q = q.flatten(2)[..., :tokens].transpose(1, 2)  # [heads, tokens, tier channels]
            if q.shape[-1]:
                out[f"{PREFIX}k{bits}"] = pack_bits(q.reshape(1, -1).to(torch.uint8), bits)
        out[f"{PREFIX}step"] = step_code
        out[f"{PREFIX}zero"] = zero.to(torch.int8)
    idx0 = channels[0]
    comps = rfft_components(x.gather(2, channel_rows(idx0, tokens))) / comp_prof[:, None, :]
    out[f"{PREFIX}k1"] = pack_bits((comps >= 0).reshape(1, -1).to(torch.uint8), 1)
    out[f"{PREFIX}gain"] = encode_gain(_mean_abs(comps), round_up=False)
    return out


def decode_keys(
    t: dict[str, torch.Tensor],
    shape: tuple[int, ...],
    channels: dict[int, torch.Tensor],
    prof: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """Inverse of ``encode_keys`` (float32 on ``prof``'s device)."""
    heads, tokens, head_dim = shape
    prof, comp_prof = prof[:, :head_dim], prof[:, head_dim:]
    idx4, idx2 = channels[2], channels[1]
    out = torch.empty(shape, device=prof.device)
    n_u = idx4.shape[1] + idx2.shape[1]
    if n_u:
        run = run_tokens(tokens, n_u, group_size)
        s = decode_gain(t[f"{PREFIX}step"])  # [heads, runs]
        low = t[f"{PREFIX}zero"].float() / ZERO_UNITS * s
        for bits, levels, idx in ((4, 15, idx4), (2, 3, idx2)):
            n = idx.shape[1]
            if not n:
                continue
            q = unpack_bits(t[f"{PREFIX}k{bits}"], bits, heads * tokens * n).view(heads, tokens, n)
            qg, _ = to_groups(q.float().transpose(1, 2), run)  # [heads, n, runs, run]
            xg = qg * (s * 3 / levels)[:, None, :, None] + low[:, None, :, None]
            xn = xg.flatten(2)[..., :tokens].transpose(1, 2)
            out.scatter_(2, channel_rows(idx, tokens), xn * prof.gather(1, idx)[:, None, :])
    idx0 = channels[0]
    m = idx0.shape[1]
    signs = unpack_bits(t[f"{PREFIX}k1"], 1, heads * tokens * m).view(heads, tokens, m).float() * 2 - 1
    comps = signs * decode_gain(t[f"{PREFIX}gain"]) * comp_prof[:, None, :]
    out.scatter_(2, channel_rows(idx0, tokens), from_rfft_components(comps, m))
    if f"{PREFIX}offset" in t:
        out += decode_offsets(t[f"{PREFIX}offset"], prof)[:, None, :]
    return out


# values -----------------------------------------------------------------------------------
def encode_values(x: torch.Tensor, prof: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Compact value fields of ``x`` ``[heads, tokens, head_dim]`` given the layer's decoded profile."""
    out = {}
    if uses_offsets(x.shape[1], "value"):
        out[f"{PREFIX}offset"], offsets = encode_offsets(x, prof)
        x = x - offsets[:, None, :]
    xn = x / prof[:, None, :]
    gamma = _mean_abs(xn)
    tern = torch.where(xn > threshold * gamma, 1, torch.where(xn < -threshold * gamma, -1, 0))
    nz = tern != 0
    # the least-squares level for fixed codes: mean |xn| over the non-zero ones
    level = (group_sum((xn.abs() * nz).flatten()) / nz.sum().clamp_min(1)).view(1)
    out[f"{PREFIX}tern"] = pack_trits((tern + 1).reshape(1, -1))
    out[f"{PREFIX}gain"] = encode_gain(level, round_up=False)
    return out


def decode_values(t: dict[str, torch.Tensor], shape: tuple[int, ...], prof: torch.Tensor) -> torch.Tensor:
    heads, tokens, head_dim = shape
    tern = unpack_trits(t[f"{PREFIX}tern"], heads * tokens * head_dim).view(shape).float() - 1
    out = tern * decode_gain(t[f"{PREFIX}gain"]) * prof[:, None, :]
    if f"{PREFIX}offset" in t:
        out += decode_offsets(t[f"{PREFIX}offset"], prof)[:, None, :]
    return out
