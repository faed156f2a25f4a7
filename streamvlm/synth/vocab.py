"""The closed vocabularies of the synthetic world: shapes, colours, digits.

Chosen so that a tiny ViT at 112 px (14-px patches) can tell every pair apart: shapes
differ in their outline (round, straight-sided, pointed, hollow corners), colours are
saturated and far apart in RGB, and none of them is close to any background colour
(backgrounds are desaturated mid-tones, see ``background.py``).
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")

# Saturated colours, each at least ~100 RGB levels (L-inf) from every other one.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 200, 60),
    "blue": (50, 100, 250),
    "yellow": (245, 220, 30),
    "white": (248, 248, 248),
    "purple": (170, 60, 225),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

DIGITS: tuple[int, ...] = tuple(range(10))

# Digits are drawn in near-black ink: dark against every object colour and every
# background palette (whose darkest level is 60), and not an object colour itself.
DIGIT_INK: tuple[int, int, int] = (15, 15, 15)
