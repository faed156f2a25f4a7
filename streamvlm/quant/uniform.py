"""Asymmetric min-max (uniform) quantization in groups along the last dimension.

Two metadata formats:

* ``fp16``: scale and minimum in fp16 per group (KIVI, int8/int4). Codes
  ``q = round((x - min) / scale)``, decoded ``q * scale + min``.
* ``log8``: scale as one log8 byte (``scales.py``, nearest code) and the minimum as an int8
  zero point in ``1 / zero_units(bits)`` steps, 16 bits per group instead of 32. Decoded
  ``scale * (q + zero / units)``. At 1-2 bits the zero point is in quarter steps: a
  whole-step zero point moves the grid by up to half a step, which with 4 levels clips the
  group's extreme values, the ones that matter most to attention (relative error 0.416
  instead of fp16's 0.393 on normal data; quarter steps: 0.393). At 3-4 bits half steps
  (4-bit error 0.0795 vs fp16's 0.0783) leave int8 room for offsets up to ~4 group ranges. Used at 1-4 bits only: the
  zero point must fit int8, which costs precision only for groups whose spread is tiny
  next to their offset (``_log8_step``).

Inputs are float32 ``[heads, rows, n]``; codes come back unpacked (uint8, ``[heads, rows, n]``).
"""

from __future__ import annotations

import torch

from .base import QuantError
from .groups import from_groups, group_min_max, to_groups
from .scales import decode_log8, encode_log8


def _safe(s: torch.Tensor) -> torch.Tensor:
    # a zero scale only happens for an all-equal group; its codes are 0 and decode exactly
    return torch.where(s > 0, s, torch.ones_like(s))


def encode_fp16(x: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    levels = (1 << bits) - 1
    xg, valid = to_groups(x, group)
    mn, mx = group_min_max(xg, valid)
    mn16 = mn.half()
    # the step is taken from the stored (rounded) minimum so that codes and decode agree
    scale16 = ((mx - mn16.float()) / levels).half()
    s = _safe(scale16.float())
    q = ((xg - mn16.float().unsqueeze(-1)) / s.unsqueeze(-1)).round().clamp(0, levels)
    return {"codes": from_groups(q, x.shape[-1]).to(torch.uint8), "scale": scale16, "min": mn16}


def decode_fp16(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int) -> torch.Tensor:
    qg, _ = to_groups(codes.float(), group)
    x = qg * scale.float().unsqueeze(-1) + mn.float().unsqueeze(-1)
    return from_groups(x, codes.shape[-1])


def zero_units(bits: int) -> int:
    """Zero-point resolution of the log8 format: 1 / units of a step."""
    return 4 if bits <= 2 else 2


def _log8_step(mn: torch.Tensor, mx: torch.Tensor, levels: int, units: int) -> torch.Tensor:
    # range / levels, but never so small that the zero point (|min| / step * units) leaves
    # int8: at 2 bits a group spread below |min| / 10 gets the step |min| / 31, ~3 % of
    # its offset. The 1.03 keeps the log8 rounding of the step in range.
    return torch.maximum((mx - mn) / levels, mn.abs() * 1.03 * units / 127.0)


def encode_log8_minmax(x: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    if bits > 4:
        raise QuantError(f"log8 min-max metadata is for 1-4 bit codes, got {bits}")
    levels = (1 << bits) - 1
    xg, valid = to_groups(x, group)
    mn, mx = group_min_max(xg, valid)
    units = zero_units(bits)
    code, head_max = encode_log8(_log8_step(mn, mx, levels, units), round_up=False)
    s = _safe(decode_log8(code, head_max))
    zero = (mn / s * units).round().clamp(-128, 127)
    q = (xg / s.unsqueeze(-1) - zero.unsqueeze(-1) / units).round().clamp(0, levels)
    return {
        "codes": from_groups(q, x.shape[-1]).to(torch.uint8),
        "scale": code,
        "zero": zero.to(torch.int8),
        "scale_max": head_max,
    }


def decode_log8_minmax(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    scale_max: torch.Tensor,
    group: int,
    bits: int,
) -> torch.Tensor:
    qg, _ = to_groups(codes.float(), group)
    s = decode_log8(scale, scale_max)
    x = (qg + zero.float().unsqueeze(-1) / zero_units(bits)) * s.unsqueeze(-1)
    return from_groups(x, codes.shape[-1])
