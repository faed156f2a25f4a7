"""8-bit log-scale storage for positive scales ("log8").

A group scale costs 16 bits in fp16; at 1-2 bits per element and 32-element groups that
is 0.5 bit per element, a quarter of the whole budget. Scales only need a few per cent
of relative precision, so ``vidkv`` stores them as one byte each:

    scale = head_max * 2 ** (-code / 16)    code in 0..254;  code 255 means exactly 0

``head_max`` is one bf16 per head per tensor (rounded *up*, so every ratio is <= 1). 16
steps per octave is a 4.4 % spacing (error <= 2.2 % rounding to nearest), covering 15.9
octaves below the head's largest scale; smaller scales are stored as the smallest code
(rounded up, never to zero, so nothing is clipped). Decoding is a table lookup, so every
device decodes the same bits to the same float32. Encoding compares the ratio with the
float64 boundaries between codes (``code_bounds``) instead of taking a float32 ``log2``,
whose last bit differs between libraries: every implementation (``kernels/*_cpu.py``)
then picks the same code.
"""

from __future__ import annotations

import torch

from .constants import DeviceConstant

STEPS_PER_OCTAVE = 16
ZERO_CODE = 255
_TABLE = DeviceConstant(
    torch.cat(
        [
            torch.exp2(-torch.arange(ZERO_CODE, dtype=torch.float64) / STEPS_PER_OCTAVE),
            torch.zeros(1, dtype=torch.float64),
        ]
    ).to(torch.float32)
)


def _bounds(offset: float) -> torch.Tensor:
    # 2 ** (-(j - offset) / 16) for j = 254 .. 1: ascending, for searchsorted
    j = torch.arange(ZERO_CODE - 1, 0, -1, dtype=torch.float64)
    return torch.exp2(-(j - offset) / STEPS_PER_OCTAVE)


# code c is chosen for ratios in (bound[c + 1], bound[c]]: floor of -16 log2(ratio) (round
# up) or its nearest integer; the code is the number of bounds >= the ratio (at most 254)
_BOUNDS = {True: DeviceConstant(_bounds(0.0)), False: DeviceConstant(_bounds(0.5))}


def code_bounds(round_up: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """float64 ``[254]``, ascending, on ``device``: a ratio's code is how many of them are >= it."""
    return _BOUNDS[round_up].on(device)


def bf16_round_up(v: torch.Tensor) -> torch.Tensor:
    """Smallest bf16 >= ``v`` (``v`` >= 0, finite)."""
    b = v.to(torch.bfloat16)
    low = b.to(v.dtype) < v
    # positive bf16 values order like their bit patterns: +1 on the bits is the next value up
    bumped = (b.view(torch.int16) + 1).view(torch.bfloat16)
    return torch.where(low, bumped, b)


def encode_log8(s: torch.Tensor, round_up: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales ``s`` ``[heads, ...]`` (>= 0) -> (codes uint8 like ``s``, head_max bf16 ``[heads]``).

    ``round_up=True`` never decodes below ``s`` (for min-max steps: no clipping);
    otherwise the nearest code (for least-squares reconstruction levels).
    """
    flat = s.float().flatten(1)
    # a zero column keeps amax defined when there are no groups at all (s >= 0 anyway)
    head_max = bf16_round_up(torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1).amax(dim=1))
    hm = head_max.float().view(-1, *([1] * (s.dim() - 1)))
    ratio = s.float() / torch.where(hm > 0, hm, torch.ones_like(hm))
    bounds = code_bounds(round_up, s.device)
    code = len(bounds) - torch.searchsorted(bounds, ratio.double().contiguous(), side="left")
    code = torch.where(s > 0, code, torch.full_like(code, ZERO_CODE))
    return code.to(torch.uint8), head_max


def decode_log8(code: torch.Tensor, head_max: torch.Tensor) -> torch.Tensor:
    """float32 scales from ``encode_log8``'s output."""
    table = _TABLE.on(code.device)
    hm = head_max.float().view(-1, *([1] * (code.dim() - 1)))
    return table[code.long()] * hm
