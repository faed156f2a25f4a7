"""Groups along the last dimension, with a last partial group.

Quantizers share scales inside groups of ``group`` consecutive elements. A length that is
not a multiple of ``group`` leaves a smaller last group; padding is only a view for
computing, and reductions ignore it.
"""

from __future__ import annotations

import torch


def num_groups(length: int, group: int) -> int:
    return -(-length // group)


def to_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., n]`` -> (``[..., groups, group]`` zero padded, ``valid`` bool ``[groups, group]``)."""
    n = x.shape[-1]
    ng = num_groups(n, group)
    pad = ng * group - n
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    valid = (torch.arange(ng * group, device=x.device) < n).view(ng, group)
    return x.reshape(*x.shape[:-1], ng, group), valid


def from_groups(xg: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of ``to_groups``."""
    return xg.flatten(-2)[..., :length]


def group_min_max(xg: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mn = xg.masked_fill(~valid, float("inf")).amin(dim=-1)
    mx = xg.masked_fill(~valid, float("-inf")).amax(dim=-1)
    return mn, mx


def group_sum(xg: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in one fixed order: element by element, accumulated in
    float64 and rounded once to float32 (what ``torch.cumsum`` does on a CPU).

    Why not ``sum``: its order (vector lanes, cascades) depends on the machine and the
    shape, so another implementation (``kernels/*_cpu.py``) could not reproduce its last
    bit; a sequential float64 sum is easy to reproduce exactly anywhere.
    """
    if xg.shape[-1] == 0:
        return xg.sum(dim=-1)
    return xg.cumsum(dim=-1)[..., -1]


def group_abs_mean(xg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # padding is zero, so it adds nothing to the sum; divide by the real count
    return group_sum(xg.abs()) / valid.sum(dim=-1).to(xg.dtype)


def expand_groups(per_group: torch.Tensor, group: int, length: int) -> torch.Tensor:
    """Per-group values ``[..., groups]`` repeated to every element ``[..., length]``."""
    return per_group.repeat_interleave(group, dim=-1)[..., :length]


def balanced_group(length: int, group: int) -> int:
    """A group size >= ``group`` that splits ``length`` into ``max(1, length // group)`` groups.

    ``vidkv`` uses it so that no group is shorter than ``group`` (a 65-token block gets two
    groups of 33 and 32, not three with a 1-token tail): metadata per element then never
    exceeds its value at exactly ``group``, which keeps the <= 2-bit guarantee for every
    block of at least ``group`` tokens. Decoding recomputes it from the length.
    """
    n = max(1, length // group)
    return max(1, -(-length // n))
