"""Measure sequential streaming decode speed of the two backends.

    python -m streamvlm.ingest.bench [VIDEO ...] [--repeats 3]

It decodes each VIDEO given or, without arguments, a 640x360, 20 s, 30 fps H.264 file
and a 160x90, 10 min one, both written to a temporary directory. Each row is the
median of ``--repeats`` full passes: frames/s over the whole file to RGB uint8 arrays,
and the time from "open" to the first frame (decord builds its whole index there).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .decode_decord import DecordDecoder, decord_available
from .decode_pyav import PyAVDecoder
from .sources import FileSource
from .synthetic import write_video


def time_pass(make_frames: Callable[[], Iterable]) -> tuple[int, float, float]:
    """Frames, seconds to the first frame, seconds in total for one pass."""
    start = time.perf_counter()
    first = None
    n = 0
    for _ in make_frames():
        if first is None:
            first = time.perf_counter() - start
        n += 1
    return n, first or 0.0, time.perf_counter() - start


def candidates(path: Path) -> dict[str, Callable[[], Iterable]]:
    """What is timed: each decoder alone, with and without threads, and FileSource."""
    runs = {
        "pyav (threads=AUTO)": lambda: PyAVDecoder(path).frames(),
        "pyav (1 thread)": lambda: PyAVDecoder(path, threads=False).frames(),
        "FileSource(pyav)": lambda: FileSource(path, backend="pyav"),
    }
    if decord_available():
        runs["decord (num_threads=0)"] = lambda: DecordDecoder(path).frames()
        runs["decord (num_threads=1)"] = lambda: DecordDecoder(path, num_threads=1).frames()
        runs["FileSource(decord)"] = lambda: FileSource(path, backend="decord")
    return runs


def bench(path: Path, repeats: int) -> list[str]:
    info = FileSource(path).info
    rows = [
        f"### {path.name}: {info.width}x{info.height}, {info.codec}, {info.fps:g} fps, {info.duration:.1f} s",
        "",
        "| decoder | frames | frames/s | first frame (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for name, make in candidates(path).items():
        passes = [time_pass(make) for _ in range(repeats)]
        n = passes[0][0]
        fps = statistics.median(n / total for n, _, total in passes)
        first_ms = statistics.median(first for _, first, _ in passes) * 1000
        rows.append(f"| {name} | {n} | {fps:.0f} | {first_ms:.0f} |")
    return rows + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        videos = list(args.videos)
        if not videos:
            # 'veryfast' with B-frames: a typical camera/screen-recording encoding.
            long = Path(tmp) / "synthetic_640x360_20s.mp4"
            write_video(long, 600, 640, 360, 30.0, options={"preset": "veryfast", "bf": "3"})
            videos.append(long)
            # Long but tiny: shows how open time (decord's index) grows with duration.
            minutes = Path(tmp) / "synthetic_160x90_10min.mp4"
            write_video(minutes, 18000, 160, 90, 30.0, options={"preset": "ultrafast", "g": "250"})
            videos.append(minutes)
        for video in videos:
            print("\n".join(bench(video, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
