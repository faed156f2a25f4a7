"""``streamvlm eval clips``: did the model learn the task? Accuracy on held-out short clips.

The clips have the shape of the base curriculum's last stage (4-16 frames at 1 fps, one
to three objects) with question families drawn uniformly, from seeds training never
draws (``train.synth_task.short_clip_samples``). Scored by greedy exact match
(``train.loop.accuracy``), per family and overall: the issue's "held-out short clips".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClipEvalResult:
    model: str
    overall: float
    clips: int
    per_family: dict[str, tuple[float, int]]  # family -> (accuracy, clips)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "overall": self.overall,
            "clips": self.clips,
            "per_family": {f: {"accuracy": a, "clips": n} for f, (a, n) in self.per_family.items()},
        }

    def table(self) -> str:
        rows = [f"{'family':<16} {'accuracy':>8} {'clips':>6}"]
        rows += [f"{f:<16} {a:>8.3f} {n:>6}" for f, (a, n) in sorted(self.per_family.items())]
        rows.append(f"{'all':<16} {self.overall:>8.3f} {self.clips:>6}")
        return "\n".join(rows)


def run_clip_eval(
    model: str, clips: int = 400, seed: int = 12345, log: Callable[[str], None] = print
) -> ClipEvalResult:
    """Score ``model`` (a name or a checkpoint of the synthetic world) on ``clips`` held-out clips."""
    from ..errors import ConfigError
    from ..models.loading import load_backend
    from ..models.qwen2_5_vl import Qwen25VLBackend
    from ..train.loop import accuracy
    from ..train.synth_task import short_clip_samples

    backend = load_backend(model, device="cpu", dtype="float32")
    if not isinstance(backend, Qwen25VLBackend):
        raise ConfigError(
            f"eval clips scores Qwen2.5-VL models trained on the synthetic world; {model!r} is not one"
        )
    log(f"drawing {clips} held-out clips (seed {seed})")
    by_family: dict[str, list] = {}
    for family, sample in short_clip_samples(clips, seed):
        by_family.setdefault(family, []).append(sample)
    per_family, right = {}, 0.0
    for family, samples in sorted(by_family.items()):
        acc = accuracy(backend, samples)
        per_family[family] = (round(acc, 4), len(samples))
        right += acc * len(samples)
        log(f"{family}: {acc:.3f} of {len(samples)}")
    return ClipEvalResult(model, round(right / clips, 4), clips, per_family)
