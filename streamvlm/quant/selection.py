"""Which channels and tokens get more bits (question-independent, decided at write time)."""

from __future__ import annotations

import torch


def top_range_channels(keys: torch.Tensor, count: int) -> torch.Tensor:
    """bool ``[heads, head_dim]``: per head, the ``count`` channels with the largest max - min.

    Ties go to the lower channel index (stable sort), so the choice is deterministic.
    """
    rng = keys.float().amax(dim=1) - keys.float().amin(dim=1)
    order = torch.argsort(-rng, dim=-1, stable=True)[:, :count]
    mask = torch.zeros_like(rng, dtype=torch.bool)
    return mask.scatter_(1, order, True)


def split_indices(mask: torch.Tensor, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending indices of the True and of the False entries of each row of ``mask``.

    Every row must hold the same number of True entries (the codecs guarantee it): pass it
    as ``count`` where the caller knows it, to spare a read of the mask from the device.
    """
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
    count = int(mask[0].sum()) if count is None else count
    return order[:, :count], order[:, count:]


def salient_count(tokens: int, fraction: float) -> int:
    return min(tokens, int(round(tokens * fraction)))


def token_energy(values: torch.Tensor) -> torch.Tensor:
    """float32 ``[..., tokens]``: each token's squared L2 norm, ``sum(v * v)`` over its channels.

    The sum runs in one fixed order of float32 additions, so that a CPU kernel repeats it bit
    for bit in the same pass that reads the values for their codes (``Tensor.norm`` adds in an
    order of its own, which changes with the build and the device): the second half of the
    channels is added to the first, then the same on the half, until one is left; a count
    that does not halve carries its last element to the next round, after the sums.
    """
    x = values.float()
    s = x * x
    while s.shape[-1] > 1:
        half = s.shape[-1] // 2
        folded = s[..., :half] + s[..., half : 2 * half]
        s = torch.cat([folded, s[..., 2 * half :]], dim=-1) if s.shape[-1] % 2 else folded
    return s[..., 0]


def salient_tokens(values: torch.Tensor, count: int) -> torch.Tensor:
    """bool ``[heads, tokens]``: per head, the ``count`` tokens with the largest value L2 norm
    (``token_energy``, its square).

    Why the norm: a token's share of the attention output is its weight times its value
    vector, so large-norm values cost the most when quantized coarsely, whatever the
    (not yet known) question. Ties go to the earlier token.
    """
    energy = token_energy(values)
    order = torch.argsort(-energy, dim=-1, stable=True)[:, :count]
    mask = torch.zeros_like(energy, dtype=torch.bool)
    return mask.scatter_(1, order, True)


def key_2bit_count(head_dim: int, fraction: float) -> int:
    """Key channels at 2 bits: ``fraction`` of head_dim, leaving at least one on each side."""
    return min(head_dim - 1, max(1, round(head_dim * fraction)))


def channel_rows(idx: torch.Tensor, tokens: int) -> torch.Tensor:
    """Channel indices ``[heads, c]`` broadcast to ``[heads, tokens, c]`` for gather/scatter."""
    return idx.unsqueeze(1).expand(-1, tokens, -1)


def channel_tiers(keys: torch.Tensor, counts: list[int], score: str = "range") -> torch.Tensor:
    """int8 ``[heads, head_dim]`` tier per channel, ranked by ``score`` over tokens.

    ``score="range"``: max - min (what a min-max quantizer pays for). ``"peak"``: max ``|x|``,
    for short samples: over a few adjacent tokens a RoPE'd channel barely moves (over one
    token its range is 0), so its range there says little of the range it sweeps later,
    while its magnitude bounds it (a rotating pair swings through +-magnitude).
    Per head, the ``counts[0]`` highest-scoring channels get tier ``len(counts)``, the next
    ``counts[1]`` tier ``len(counts) - 1``, and so on; the rest tier 0. Ties go to the lower
    channel index.
    """
    if score == "range":
        rng = keys.float().amax(dim=1) - keys.float().amin(dim=1)
    elif score == "peak":
        rng = keys.float().abs().amax(dim=1)
    else:
        raise ValueError(f"channel_tiers: score must be 'range' or 'peak', got {score!r}")
    order = torch.argsort(-rng, dim=-1, stable=True)
    tiers = torch.zeros_like(rng, dtype=torch.int8)
    start = 0
    for i, count in enumerate(counts):
        tiers.scatter_(1, order[:, start : start + count], len(counts) - i)
        start += count
    return tiers


def tier_indices(tiers: torch.Tensor, tier: int, count: int | None = None) -> torch.Tensor:
    """Ascending channel indices ``[heads, count]`` of ``tier`` (every head has the same count;
    pass it where the caller knows it, to spare a read of ``tiers`` from the device)."""
    count = int((tiers[0] == tier).sum()) if count is None else count
    return torch.argsort((tiers != tier).to(torch.int8), dim=-1, stable=True)[:, :count]
