"""What ``streamvlm watch`` prints: the progress bar, answers as text, JSON-ready records."""

from __future__ import annotations

import dataclasses
import sys
import time
import unicodedata
from typing import Any, TextIO


def plain(obj: Any) -> Any:
    """A JSON-ready copy of a dataclass / object with attributes / mapping."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def human_bytes(n: float) -> str:
    """``n`` bytes as ``512 B``, ``1.5 KiB`` ... ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def printable(text: str) -> str:
    """Escape control characters (a random-weight model emits any byte) so they cannot
    drive the terminal; newlines and tabs stay."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else c.encode("unicode_escape").decode()
        for c in text
    )


def format_answer(answer, at: float | None = None) -> str:
    """``[12.5s] Q: ...`` and the answer aligned under it."""
    t = answer.asked_at if at is None else at
    head = f"[{t:.1f}s] "
    return f"{head}Q: {answer.question}\n{' ' * len(head)}A: {printable(answer.text.strip())}"


def answer_record(answer, kind: str, requested_at: float | None) -> dict:
    """An answer as it appears in ``--json`` output: how it was asked (``ask`` or ``ask-at``) and when."""
    record = plain(answer.to_dict())
    record["kind"] = kind
    record["requested_at"] = requested_at
    return record


class Progress:
    """tqdm bar on stderr: frames fed, stream time, real-time factor, bytes held."""

    def __init__(self, enabled: bool, total: int | None):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, unit="frame", file=sys.stderr, disable=not enabled, dynamic_ncols=True, desc="watch"
        )
        self._last = 0.0

    def update(self, session, stream_t: float, wall_s: float, n: int = 1, force: bool = False) -> None:
        """Count ``n`` frames; redraw the figures at most every 0.25 s unless ``force``."""
        self.bar.update(n)
        now = time.monotonic()
        if self.bar.disable or (not force and now - self._last < 0.25):
            return
        self._last = now
        held = sum(session.stats().bytes_per_tier.values())
        rtf = stream_t / wall_s if wall_s > 0 else 0.0
        self.bar.set_postfix_str(f"t={stream_t:.1f}s rtf={rtf:.2f}x held={human_bytes(held)}", refresh=True)

    def write(self, text: str, file: TextIO) -> None:
        """Print ``text`` to ``file`` above the bar."""
        from tqdm import tqdm

        if self.bar.disable:
            print(text, file=file, flush=True)
        else:
            tqdm.write(text, file=file)

    def close(self) -> None:
        self.bar.close()
