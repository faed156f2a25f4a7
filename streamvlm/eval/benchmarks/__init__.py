"""Public benchmarks, run causally and scored with their official rules (docs/evaluation.md).

Each benchmark is a ``base.Benchmark`` in its own module, imported only when named (the
CLI's start-up stays light).
"""

from __future__ import annotations

from importlib import import_module

from .base import AnnotationError, Benchmark, BenchQuestion, Prediction

# CLI name -> (module, class)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ovo-bench": ("ovo_bench", "OVOBench"),
    "streamingbench": ("streamingbench", "StreamingBench"),
    "rvs-ego": ("rvs", "RVSEgo"),
    "rvs-movie": ("rvs", "RVSMovie"),
    "mlvu": ("mlvu", "MLVU"),
    "video-mme": ("video_mme", "VideoMME"),
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (one of ``BENCHMARKS``)."""
    if name not in BENCHMARKS:
        raise AnnotationError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    module, cls = BENCHMARKS[name]
    return getattr(import_module(f"{__name__}.{module}"), cls)()


__all__ = ["BENCHMARKS", "AnnotationError", "BenchQuestion", "Benchmark", "Prediction", "get_benchmark"]
