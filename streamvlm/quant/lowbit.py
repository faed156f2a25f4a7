"""1-bit sign and 1.58-bit ternary quantizers, in groups along the last dimension.

Both work on float32 ``[..., n]`` with one scale per group of ``group`` elements (the
codecs put tokens on the last axis, so a group is "one channel, ``group`` tokens").

* sign: ``x ~ s * sign(x)`` with ``s = mean|x|`` over the group, the least-squares level
  for fixed signs. Decoded ``+s`` or ``-s``: never ``{0, s}``.
* ternary (BitNet b1.58 "absmean"): ``t = round_clip(x / gamma, -1, 1)`` with
  ``gamma = mean|x|``, i.e. threshold ``gamma / 2``; decoded ``level * t``. The published
  method decodes with ``level = gamma``; ``ternary_ls_level`` gives the least-squares level
  for the chosen signs (mean ``|x|`` over the non-zero codes), which ``vidkv`` uses.
"""

from __future__ import annotations

import torch

from .groups import expand_groups, group_abs_mean, group_sum, to_groups


def sign_encode(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits uint8 ``[..., n]``, 1 where ``x >= 0``; scales float32 ``[..., groups]``)."""
    xg, valid = to_groups(x, group)
    return (x >= 0).to(torch.uint8), group_abs_mean(xg, valid)


def sign_decode(bits: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    signs = bits.float() * 2 - 1
    return signs * expand_groups(scale.float(), group, bits.shape[-1])


def ternary_encode(x: torch.Tensor, group: int, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 in {-1, 0, 1}; gamma = mean|x| per group). Zero where ``|x| <= threshold * gamma``."""
    xg, valid = to_groups(x, group)
    gamma = group_abs_mean(xg, valid)
    thr = expand_groups(gamma * threshold, group, x.shape[-1])
    t = torch.where(x > thr, 1, torch.where(x < -thr, -1, 0)).to(torch.int8)
    return t, gamma


def ternary_ls_level(x: torch.Tensor, t: torch.Tensor, group: int) -> torch.Tensor:
    """Least-squares level per group for fixed codes ``t``: mean ``|x|`` where ``t != 0`` (0 if none)."""
    nz = t != 0
    xg, _ = to_groups(x.abs() * nz, group)
    cg, _ = to_groups(nz.float(), group)
    count = cg.sum(dim=-1)
    return group_sum(xg) / count.clamp_min(1)


def ternary_decode(t: torch.Tensor, level: torch.Tensor, group: int) -> torch.Tensor:
    return t.float() * expand_groups(level.float(), group, t.shape[-1])
