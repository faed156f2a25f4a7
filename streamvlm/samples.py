"""A deterministic synthetic sample video, and a helper that writes short test clips.

The bundled ``assets/sample.mp4`` (320x240, 8 fps, 20 s, H.264 yuv420p) shows a slowly
drifting cloudy background with coloured shapes that enter, move and leave, and one hard
scene change half-way through. With the default 20 s length:

- 0-10 s, scene 1 (blue-grey clouds drifting right): a red circle crosses from left to
  right (1-7 s); a yellow square slides down from the top (3-9 s).
- 10 s: hard cut to scene 2 (green-brown clouds drifting down).
- 10-20 s, scene 2: a blue triangle crosses from right to left (11-17 s); a white bar
  rises from the bottom (13-19 s).

Everything is drawn with a seeded ``numpy`` generator and encoded with a single encoder
thread, so two runs with the same arguments decode to identical frames. Regenerate the
asset with::

    python -m streamvlm.samples assets/sample.mp4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_WIDTH = 320
SAMPLE_HEIGHT = 240
SAMPLE_FPS = 8.0
SAMPLE_SECONDS = 20.0
SAMPLE_SEED = 0


@dataclass(frozen=True)
class Shape:
    """A coloured shape visible during a fraction of the clip, moving on a straight line.

    Times (``start``, ``end``) and positions (``x0, y0 → x1, y1``, centre of the shape)
    are fractions of the clip's duration and of the frame's width/height; ``size`` is a
    fraction of the frame height.
    """

    kind: str  # "circle" | "square" | "triangle" | "bar"
    color: tuple[int, int, int]
    start: float
    end: float
    x0: float
    y0: float
    x1: float
    y1: float
    size: float


# Timeline of the scene in fractions of the duration (see the module docstring for the
# 20 s sample in seconds). Shapes start and end outside the frame so they enter and leave.
SHAPES: tuple[Shape, ...] = (
    Shape("circle", (220, 40, 40), 0.05, 0.35, -0.15, 0.55, 1.15, 0.45, 0.22),
    Shape("square", (235, 205, 40), 0.15, 0.45, 0.60, -0.20, 0.55, 1.20, 0.20),
    Shape("triangle", (40, 80, 225), 0.55, 0.85, 1.15, 0.40, -0.15, 0.60, 0.26),
    Shape("bar", (240, 240, 240), 0.65, 0.95, 0.35, 1.20, 0.40, -0.20, 0.12),
)
SCENE_CUT = 0.5  # fraction of the duration where scene 1 cuts to scene 2

# Two colour palettes (dark, light) blended by the background noise.
_PALETTES = (
    ((40, 60, 110), (150, 175, 210)),  # scene 1: blue-grey sky
    ((60, 80, 35), (170, 150, 95)),  # scene 2: green-brown field
)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly interpolated value noise in [0, 1] with about ``cells`` cells across."""
    gh = max(2, round(cells * h / max(h, w)) + 2)
    gw = max(2, round(cells * w / max(h, w)) + 2)
    grid = rng.random((gh, gw))
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0 = ys.astype(int)
    x0 = xs.astype(int)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    # Smoothstep the fractions so cell borders do not show as creases.
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(rng: np.random.Generator, h: int, w: int, palette) -> np.ndarray:
    """A cloudy RGB texture (float32, 0-255) of size ``(h, w, 3)``."""
    noise = (
        0.55 * _smooth_noise(rng, h, w, 4)
        + 0.30 * _smooth_noise(rng, h, w, 9)
        + 0.15 * _smooth_noise(rng, h, w, 20)
    )
    dark, light = (np.asarray(c, dtype=np.float32) for c in palette)
    return (dark + noise[..., None].astype(np.float32) * (light - dark)).astype(np.float32)


class SceneRenderer:
    """Renders frame ``i`` of the synthetic scene. Pure function of its arguments."""

    def __init__(self, width: int, height: int, num_frames: int, fps: float, seed: int = SAMPLE_SEED):
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError(f"width and height must be even and >= 16, got {width}x{height}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.width, self.height, self.num_frames, self.fps = width, height, num_frames, float(fps)
        rng = np.random.default_rng(seed)
        # Backgrounds are larger than the frame; the visible window drifts across them.
        self._margin_x = max(8, width // 4)
        self._margin_y = max(8, height // 4)
        bh, bw = height + self._margin_y, width + self._margin_x
        self._backgrounds = [_background(rng, bh, bw, p) for p in _PALETTES]
        self._yy, self._xx = np.mgrid[0:height, 0:width].astype(np.float32)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def frame(self, i: int) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` for frame ``i`` (time ``i / fps``)."""
        u = i / max(1, self.num_frames)  # progress through the clip in [0, 1)
        if u < SCENE_CUT:
            bg = self._backgrounds[0]
            p = u / SCENE_CUT  # scene 1 drifts right: the window moves left over the texture
            ox, oy = round((1 - p) * self._margin_x), self._margin_y // 2
        else:
            bg = self._backgrounds[1]
            p = (u - SCENE_CUT) / (1 - SCENE_CUT)  # scene 2 drifts down
            ox, oy = self._margin_x // 2, round((1 - p) * self._margin_y)
        img = bg[oy : oy + self.height, ox : ox + self.width].copy()
        for shape in SHAPES:
            if shape.start <= u < shape.end:
                self._draw(img, shape, (u - shape.start) / (shape.end - shape.start))
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def _draw(self, img: np.ndarray, s: Shape, p: float) -> None:
        cx = (s.x0 + p * (s.x1 - s.x0)) * self.width
        cy = (s.y0 + p * (s.y1 - s.y0)) * self.height
        r = s.size * self.height / 2
        dx, dy = self._xx - cx, self._yy - cy
        if s.kind == "circle":
            mask = dx * dx + dy * dy <= r * r
        elif s.kind == "square":
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        elif s.kind == "bar":
            mask = (np.abs(dx) <= 2.5 * r) & (np.abs(dy) <= r)
        elif s.kind == "triangle":  # pointing up: below the two slanted edges, above the base
            mask = (dy <= r) & (dy >= -r + 2 * np.abs(dx))
        else:
            raise ValueError(f"unknown shape kind {s.kind!r}")
        img[mask] = np.asarray(s.color, dtype=np.float32)


def iter_frames(
    num_frames: int, width: int, height: int, fps: float, seed: int = SAMPLE_SEED
) -> Iterator[np.ndarray]:
    """Yield the scene's frames as RGB uint8 arrays without encoding them."""
    scene = SceneRenderer(width, height, num_frames, fps, seed)
    for i in range(num_frames):
        yield scene.frame(i)


def write_video(
    path: str | Path,
    num_frames: int = 16,
    width: int = 64,
    height: int = 48,
    fps: float = 8.0,
    seed: int = SAMPLE_SEED,
    crf: int = 23,
) -> Path:
    """Write the synthetic scene as an H.264 (yuv420p) video and return its path.

    The container follows the suffix (``.mp4``, ``.mkv``, ...). Small defaults suit
    tests; :func:`write_sample` writes the bundled 320x240, 20 s clip.
    """
    from .ingest.synthetic import write_video as encode_video

    scene = SceneRenderer(width, height, num_frames, fps, seed)
    options = {"crf": str(crf), "preset": "medium", "g": str(max(1, round(2 * fps)))}
    return encode_video(
        path,
        n_frames=num_frames,
        width=width,
        height=height,
        fps=fps,
        options=options,
        draw=lambda i, _w, _h: scene.frame(i),
    )


def write_sample(path: str | Path = "assets/sample.mp4") -> Path:
    """Write the bundled sample clip (320x240, 8 fps, 20 s)."""
    return write_video(
        path,
        num_frames=round(SAMPLE_SECONDS * SAMPLE_FPS),
        width=SAMPLE_WIDTH,
        height=SAMPLE_HEIGHT,
        fps=SAMPLE_FPS,
        seed=SAMPLE_SEED,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamvlm.samples", description="Write the synthetic sample video."
    )
    parser.add_argument("path", nargs="?", default="assets/sample.mp4", help="output file (.mp4)")
    parser.add_argument("--seconds", type=float, default=SAMPLE_SECONDS)
    parser.add_argument("--fps", type=float, default=SAMPLE_FPS)
    parser.add_argument("--width", type=int, default=SAMPLE_WIDTH)
    parser.add_argument("--height", type=int, default=SAMPLE_HEIGHT)
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    args = parser.parse_args(argv)
    try:
        out = write_video(
            args.path,
            num_frames=max(1, round(args.seconds * args.fps)),
            width=args.width,
            height=args.height,
            fps=args.fps,
            seed=args.seed,
        )
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
