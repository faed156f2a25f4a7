"""Boolean masks for the shapes and a built-in 5x7 bitmap font for the digits.

Masks are computed once per size and reused for every frame, so drawing an object is one
boolean-indexed assignment into the frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# A classic 5x7 pixel font; '#' is ink. Plain (unslashed) zero, so 0 and 8 differ clearly.
_FONT_5X7: dict[int, tuple[str, ...]] = {
    0: (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """``(size, size)`` bool mask of ``shape`` drawn in a ``size`` x ``size`` box.

    Outlines are sized so the shapes have comparable areas and each keeps a clear
    signature at 112 px: the circle fills the box, the square is inset (its corners
    would otherwise make it a bigger blob than the rest), the triangle points up, the
    cross has thick arms (so a digit still sits mostly on colour), the diamond is a
    square standing on a corner.
    """
    # Pixel centres in box coordinates, origin at the box centre, unit = half the box.
    c = (np.arange(size) + 0.5 - size / 2) / (size / 2)
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        mask = x * x + y * y <= 1.0
    elif shape == "square":
        mask = (np.abs(x) <= 0.84) & (np.abs(y) <= 0.84)
    elif shape == "triangle":  # apex at the top, base at the bottom of the box
        mask = (y <= 1.0) & (np.abs(x) <= (y + 1.0) / 2)
    elif shape == "cross":
        arm = 0.45  # 16 px at 36 px: a 15-px-wide digit fits on the vertical arm
        mask = ((np.abs(x) <= arm) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= arm) & (np.abs(x) <= 1.0))
    elif shape == "diamond":
        mask = np.abs(x) + np.abs(y) <= 1.0
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


def digit_scale(object_size: int) -> int:
    """Pixels per font dot for objects of ``object_size`` px (3 at 36 px: a 15x21 digit)."""
    return max(1, round(object_size / 12))


@lru_cache(maxsize=64)
def digit_mask(digit: int, scale: int) -> np.ndarray:
    """``(7*scale, 5*scale)`` bool mask of ``digit`` in the 5x7 font, each dot ``scale`` px."""
    rows = _FONT_5X7[digit]
    dots = np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)
    mask = np.kron(dots, np.ones((scale, scale), dtype=bool))
    mask.setflags(write=False)
    return mask


def digit_offset(shape: str, object_size: int, scale: int) -> tuple[int, int]:
    """Top-left ``(dx, dy)`` of the digit inside the object's box.

    Centred, except in the triangle, where it sits on the centroid (a third of the way up
    from the base) so that most of it lands on colour rather than on the background.
    """
    h, w = 7 * scale, 5 * scale
    dx = (object_size - w) // 2
    dy = (object_size - h) // 2
    if shape == "triangle":
        dy = min(object_size - h, dy + object_size // 6)
    return dx, dy
