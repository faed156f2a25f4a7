"""Tile shapes shared by the decode kernels (host side, no triton import)."""

from __future__ import annotations

# elements per program: a [BLOCK_T, BLOCK_D] tile of the output
TILE_ELEMENTS = 4096


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_tile(tokens: int, head_dim: int) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_D): whole rows of head_dim (tl.arange needs powers of two), and as
    many tokens as fit in ``TILE_ELEMENTS``, but no more than the block has."""
    block_d = next_power_of_2(head_dim)
    block_t = max(1, min(next_power_of_2(tokens), TILE_ELEMENTS // block_d))
    return block_t, block_d
