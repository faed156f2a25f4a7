"""Scene backgrounds: a low-contrast cloudy texture that drifts slowly, cut now and then.

Each scene has its own palette (two desaturated mid-tones), texture and drift velocity.
The texture is *periodic* with period = frame size and stored tiled 2x2, so a frame is a
plain slice at ``offset mod period`` however long the scene drifts: no per-frame noise
synthesis, which keeps 3600-frame streams cheap to render. Consecutive frames in a scene
differ by a shift of about one pixel, so they are as redundant as real video.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# (dark, light) pairs. Desaturated (channel spread <= 45) and kept within 60..170, so no
# background pixel is within 50 levels (L-inf) of an object colour or of the digit ink,
# and each palette's mean differs from the others' enough that a cut is obvious.
PALETTES: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((70, 80, 105), (115, 125, 150)),  # slate
    ((85, 92, 62), (130, 138, 105)),  # olive
    ((125, 110, 90), (170, 155, 135)),  # sand
    ((62, 95, 92), (100, 138, 132)),  # teal-grey
    ((100, 78, 92), (145, 120, 135)),  # mauve
    ((95, 95, 95), (150, 150, 150)),  # grey
)

# Octaves of value noise (cells across one period, weight): a few big soft blobs plus
# some finer grain, so the drift is visible but each 1-px step changes little.
_OCTAVES = ((3, 0.55), (6, 0.30), (12, 0.15))


@dataclass(frozen=True)
class Scene:
    """One stretch of background between two cuts.

    ``frame_start``: first frame of the scene; ``palette``: index into ``PALETTES``;
    ``texture_seed``: seed of its texture; ``velocity``: drift in px per second (x, y);
    ``offset``: texture offset (x, y) at ``frame_start``.
    """

    frame_start: int
    palette: int
    texture_seed: int
    velocity: tuple[float, float]
    offset: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            frame_start=int(d["frame_start"]),
            palette=int(d["palette"]),
            texture_seed=int(d["texture_seed"]),
            velocity=(float(d["velocity"][0]), float(d["velocity"][1])),
            offset=(int(d["offset"][0]), int(d["offset"][1])),
        )


def periodic_noise(rng: np.random.Generator, period: int, cells: int) -> np.ndarray:
    """``(period, period)`` smooth value noise in [0, 1] that tiles seamlessly."""
    grid = rng.random((cells, cells))
    u = np.arange(period) * cells / period
    i0 = u.astype(int)
    i1 = (i0 + 1) % cells  # wrap: the last cell blends into the first, so the tile repeats
    f = u - i0
    f = f * f * (3 - 2 * f)  # smoothstep hides the cell borders
    fy, fx = f[:, None], f[None, :]
    top = grid[i0][:, i0] * (1 - fx) + grid[i0][:, i1] * fx
    bottom = grid[i1][:, i0] * (1 - fx) + grid[i1][:, i1] * fx
    return top * (1 - fy) + bottom * fy


def texture_tile(texture_seed: int, palette: int, period: int) -> np.ndarray:
    """The scene's texture, uint8 ``(2*period, 2*period, 3)`` (a periodic tile, repeated 2x2)."""
    rng = np.random.default_rng(texture_seed)
    noise = sum(w * periodic_noise(rng, period, cells) for cells, w in _OCTAVES)
    noise = (noise - noise.min()) / max(1e-9, noise.max() - noise.min())  # same contrast in every scene
    dark, light = (np.asarray(c, dtype=np.float64) for c in PALETTES[palette])
    rgb = np.rint(dark + noise[..., None] * (light - dark)).astype(np.uint8)
    return np.tile(rgb, (2, 2, 1))


def make_scenes(
    rng: np.random.Generator, n_frames: int, fps: float, size: int, scene_seconds: float | None
) -> list[Scene]:
    """Scenes covering ``n_frames`` frames, with a cut every ``scene_seconds`` on average
    (uniform in 0.5x..1.5x; ``None`` or 0: one scene). Consecutive scenes never share a
    palette, so every cut changes the colours."""
    scenes: list[Scene] = []
    frame = 0
    palette = -1
    while frame < n_frames:
        choices = [p for p in range(len(PALETTES)) if p != palette]
        palette = int(choices[rng.integers(len(choices))])
        speed = rng.uniform(0.6, 1.4) * size / 112  # px per second: about one pixel per frame at 1 fps
        angle = rng.uniform(0, 2 * np.pi)
        scenes.append(
            Scene(
                frame_start=frame,
                palette=palette,
                texture_seed=int(rng.integers(2**31)),
                velocity=(float(speed * np.cos(angle)), float(speed * np.sin(angle))),
                offset=(int(rng.integers(size)), int(rng.integers(size))),
            )
        )
        if not scene_seconds:
            break
        frame += max(1, round(rng.uniform(0.5, 1.5) * scene_seconds * fps))
    return scenes
