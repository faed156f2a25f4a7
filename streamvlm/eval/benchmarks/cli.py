"""``streamvlm eval BENCH ...`` (run a public benchmark causally) and ``streamvlm eval score
BENCH ...`` (score predictions, or a constant baseline, with the official rules).

The parsers import nothing heavy; torch and the model load only when a run starts, after
every path and option has been checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ...cli_options import (
    add_json_option,
    add_max_new_tokens_option,
    add_memory_options,
    add_model_options,
    add_progress_option,
    check_existing_directory,
    check_model_options,
    load_model,
    memory_config,
    memory_overrides,
    note_memory_options,
)
from ...errors import ConfigError
from . import BENCHMARKS, get_benchmark

# the session memory options a benchmark run takes (disk tiers: a run is one process)
MEMORY_OPTIONS = ("window", "top_k", "answer_window", "answer_tokens", "max_position_span", "query_context")
MEMORY_OPTIONS += ("positions", "device_bytes", "host_bytes", "prune", "host_codec")
BASELINES = ("constant",)


def add_benchmark_parsers(evals) -> None:
    """Add ``eval <benchmark>`` for every registered benchmark and ``eval score`` to ``evals``."""
    for name in BENCHMARKS:
        p = evals.add_parser(
            name,
            help=f"run {name} causally over its videos and write predictions (docs/evaluation.md)",
            description=(
                f"Stream each {name} video through one session and ask its questions when the stream "
                "reaches their time (no later frame reaches an answer); append one JSON line per answer "
                "to --out, skipping questions already there. Score them with `streamvlm eval score`."
            ),
        )
        p.add_argument("--data", required=True, metavar="DIR", help="the benchmark's data directory (videos)")
        p.add_argument(
            "--annotations",
            action="append",
            metavar="FILE",
            help="official annotation file (repeatable; default: the official file names inside --data)",
        )
        p.add_argument(
            "--out", required=True, metavar="FILE", help="predictions file (JSON Lines), resumable"
        )
        add_model_options(p)
        p.add_argument(
            "--fps",
            type=float,
            default=None,
            help="frames per second fed to the model (default: the benchmark's)",
        )
        p.add_argument(
            "--context-seconds",
            type=float,
            default=None,
            metavar="S",
            help="answer each question from a fresh session fed only its last S seconds (StreamingBench's "
            "official setting is 60); default: one session per video, the whole history",
        )
        p.add_argument("--limit", type=int, default=None, metavar="N", help="answer at most N new questions")
        p.add_argument(
            "--skip-missing",
            action="store_true",
            help="answer the questions whose videos exist, skip the rest",
        )
        add_memory_options(p, *MEMORY_OPTIONS)
        add_max_new_tokens_option(p)
        add_progress_option(p)
        add_json_option(p)
        p.set_defaults(func=cmd_eval_benchmark, benchmark=name)

    s = evals.add_parser(
        "score",
        help="score a benchmark's predictions (or a constant baseline) with its official rules",
        description=(
            "Parse each prediction the way the benchmark's official script does and print its official "
            "metric with the breakdown it reports (--json: one JSON object, key `metric`)."
        ),
    )
    s.add_argument(
        "benchmark", metavar="BENCH", choices=tuple(BENCHMARKS), help=f"one of {', '.join(BENCHMARKS)}"
    )
    s.add_argument(
        "--annotations", action="append", required=True, metavar="FILE", help="official file (repeatable)"
    )
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="FILE", help="predictions written by `streamvlm eval BENCH`")
    source.add_argument(
        "--baseline",
        choices=BASELINES,
        help="score a chance baseline instead: first option (A), 'No' for yes/no probes, 0 for counts",
    )
    s.add_argument("--judge-url", metavar="URL", help="OpenAI-compatible endpoint of the LLM judge (RVS)")
    s.add_argument("--judge-model", metavar="NAME", help="the judge's model name at --judge-url (RVS)")
    s.add_argument(
        "--judge-api-key-env",
        metavar="VAR",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key, if it needs one (default: OPENAI_API_KEY)",
    )
    add_json_option(s)
    s.set_defaults(func=cmd_eval_score)


def _load_questions(bench, files):
    for f in files:
        if not Path(f).is_file():
            raise ConfigError(
                f"--annotations {f}: no such file; pass the benchmark's official annotation file"
            )
    return bench.load([Path(f) for f in files])


def cmd_eval_score(args: argparse.Namespace) -> int:
    """Run ``streamvlm eval score``."""
    from .base import read_predictions

    bench = get_benchmark(args.benchmark)
    questions = _load_questions(bench, args.annotations)
    if args.judge_url is not None or args.judge_model is not None:
        _attach_judge(bench, args)
    if args.baseline is not None:
        responses = {q.id: bench.baseline_response(q) for q in questions}
    else:
        responses = read_predictions(args.predictions)
        unknown = set(responses) - {q.id for q in questions}
        if unknown and len(unknown) == len(responses):
            raise ConfigError(
                f"none of the {len(responses)} predictions in {args.predictions} answers a question of "
                f"{', '.join(args.annotations)}; score them against the annotations they were made from"
            )
    result = bench.score(questions, responses)
    result = {"benchmark": bench.name, **result}
    if args.baseline is not None:
        result["baseline"] = args.baseline
    print(json.dumps(result, indent=2) if args.json else format_score(result))
    return 0


def _attach_judge(bench, args: argparse.Namespace) -> None:
    import os

    if not hasattr(bench, "judge"):
        raise ConfigError(f"{bench.name} is scored without a judge; leave out --judge-url and --judge-model")
    if args.judge_url is None or args.judge_model is None:
        raise ConfigError("the judge needs both --judge-url URL and --judge-model NAME")
    from .judge import Judge

    # each benchmark's official scripts send their own temperature (MLVU 0, Flash-VStream 0.002)
    options = {"temperature": bench.judge_temperature} if hasattr(bench, "judge_temperature") else {}
    bench.judge = Judge(
        args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_api_key_env), **options
    )


def format_score(result: dict, indent: str = "") -> str:
    """A score dict as indented lines, the metric first; a breakdown entry that has a
    ``score`` reads ``name: score (n=N)`` on one line."""
    lines = []
    first = ["benchmark", "metric_name", "metric"]
    for key in first + [k for k in result if k not in first]:
        if key not in result:
            continue
        value = result[key]
        if isinstance(value, dict) and "score" in value:
            n = f" (n={value['n']})" if "n" in value else ""
            lines.append(f"{indent}{key}: {value['score']}{n}")
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(format_score(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(line for line in lines if line)


def cmd_eval_benchmark(args: argparse.Namespace) -> int:
    """Run ``streamvlm eval BENCH``: check everything, load the model, answer, report."""
    from .driver import DriverOptions, describe_missing, missing_videos, progress_printer, run_benchmark

    bench = get_benchmark(args.benchmark)
    check_existing_directory(args.data, "--data", "the benchmark's data directory")
    options = DriverOptions(
        fps=args.fps if args.fps is not None else bench.default_fps,
        max_new_tokens=args.max_new_tokens,
        context_seconds=args.context_seconds,
        limit=args.limit,
    )
    files = args.annotations or bench.default_annotations(args.data)
    questions = _load_questions(bench, files)
    if not questions:
        raise ConfigError(f"{', '.join(map(str, files))} holds no question")
    missing = missing_videos(bench, args.data, questions)
    if missing and not args.skip_missing:
        raise ConfigError(describe_missing(missing, len({q.video for q in questions}), args.data))
    absent = {str(p) for p in missing}
    runnable = [q for q in questions if str(bench.video_path(args.data, q)) not in absent]
    skipped, questions = len(questions) - len(runnable), runnable
    if Path(args.out).is_dir():
        raise ConfigError(
            f"--out {args.out} is a directory; give a file name, e.g. {args.out}/predictions.jsonl"
        )
    check_model_options(args)
    memory_config(args)  # checks the memory options before the model loads
    engine = load_model(args)
    note_memory_options(args)
    memory = engine.memory(**memory_overrides(args))
    bar, progress = progress_printer(len(questions) if args.limit is None else args.limit, args.progress)
    started = time.perf_counter()
    try:
        summary = run_benchmark(bench, questions, args.data, engine, args.out, options, memory, progress)
    finally:
        if bar is not None:
            bar.close()
    report = {
        "benchmark": bench.name,
        "predictions": str(args.out),
        "answered": summary.answered,
        "already_answered": summary.already,
        "skipped_missing_video": skipped,
        "sessions": summary.sessions,
        "frames": summary.frames,
        "seconds": round(time.perf_counter() - started, 2),
        "fps": options.fps,
        "context_seconds": options.context_seconds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{bench.name}: answered {summary.answered} questions ({summary.already} already in {args.out}"
            + (f", {skipped} skipped: video missing" if skipped else "")
            + f") in {report['seconds']:.1f} s over {summary.sessions} sessions; score with: streamvlm eval "
            f"score {bench.name} --annotations {' --annotations '.join(map(str, files))} --predictions {args.out}",
            file=sys.stdout,
        )
    return 0
