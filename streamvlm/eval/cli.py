"""``streamvlm eval needle|clips|streams|<benchmark>|score``: the parser (light: no torch at start-up) and the commands."""

from __future__ import annotations

import argparse
import json

from ..cli_options import (
    add_json_option,
    add_memory_options,
    add_model_options,
    add_plot_option,
    check_model_options,
    line_printer,
    parse_lengths,
    write_results,
)
from ..errors import ConfigError
from .benchmarks.cli import add_benchmark_parsers
from .streams_cli import add_streams_parser


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` (with its ``needle`` and ``clips`` evaluations) to ``subparsers`` and return its parser."""
    from .needle import NeedleEvalConfig

    d = NeedleEvalConfig()
    ev = subparsers.add_parser(
        "eval", help="accuracy: the tiny model's evaluations, and public benchmarks run causally and scored"
    )
    evals = ev.add_subparsers(dest="evaluation", metavar="EVAL", parser_class=type(ev))
    evals.required = True
    n = evals.add_parser(
        "needle",
        help="needle-in-a-video-haystack: accuracy per stream length, distance and configuration",
        description=(
            "Stream synthetic needle videos of each length through a session, ask about needles at "
            "controlled distances in the past (at the end and mid-stream), and answer every question "
            "with each configuration in the same run: plain transformers over all frames (up to "
            "--plain-max-frames), lossless, top<K> retrieval, top<K>-contiguous. Prints accuracy "
            "tables (or --json) and can plot them."
        ),
    )
    add_model_options(n, model=d.model, loading=False)
    n.add_argument(
        "--lengths", default=_csv(d.lengths), help=f"stream lengths in frames (default: {_csv(d.lengths)})"
    )
    n.add_argument(
        "--streams", type=int, default=d.streams, help=f"streams per length (default: {d.streams})"
    )
    n.add_argument("--configs", default=_csv(d.configs), help=f"configurations (default: {_csv(d.configs)})")
    n.add_argument(
        "--min-questions",
        type=int,
        default=d.min_questions,
        help=f"add streams until each length has this many questions (default: {d.min_questions})",
    )
    add_memory_options(
        n, "window", "query_context", "max_position_span", window=d.window, query_context=d.query_context
    )
    n.add_argument(
        "--mid-questions", type=int, default=d.mid_questions, help="mid-stream ask times per stream"
    )
    n.add_argument("--plain-max-frames", type=int, default=d.plain_max_frames)
    n.add_argument("--seed", type=int, default=d.seed)
    add_json_option(n)
    add_plot_option(n)
    n.set_defaults(func=cmd_eval_needle)
    c = evals.add_parser(
        "clips",
        help="held-out short clips: did the model learn the task? accuracy per question family",
        description=(
            "Score a model trained on the synthetic world on held-out 4-16 frame clips (one to three "
            "objects, question families drawn uniformly) by greedy exact match; a table or --json."
        ),
    )
    add_model_options(c, model=d.model, device=False)  # clips are scored on CPU in float32
    c.add_argument("--clips", type=int, default=400, help="held-out clips (default: 400)")
    c.add_argument("--seed", type=int, default=12345, help="seed of the held-out clips (default: 12345)")
    add_json_option(c)
    c.set_defaults(func=cmd_eval_clips)
    add_streams_parser(evals)
    add_benchmark_parsers(evals)
    return ev


def cmd_eval_clips(args: argparse.Namespace) -> int:
    """Run ``streamvlm eval clips``."""
    if args.clips < 1:
        raise ConfigError(f"--clips must be >= 1, got {args.clips}")
    check_model_options(args)
    from .clips import run_clip_eval  # imports torch: after the cheap checks

    result = run_clip_eval(args.model, args.clips, args.seed, log=line_printer(args.json))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def _csv(values) -> str:
    return ",".join(map(str, values))


def cmd_eval_needle(args: argparse.Namespace) -> int:
    """Run ``streamvlm eval needle``; bad lengths and configuration names fail before the model loads."""
    from .needle import MIN_LENGTH, NeedleEvalConfig, distance_table, plot, run_needle_eval

    lengths = parse_lengths(args.lengths, MIN_LENGTH, "16,256,3600")
    if (
        min(args.streams, args.window, args.plain_max_frames) < 1
        or min(args.mid_questions, args.min_questions) < 0
    ):
        raise ConfigError(
            "--streams, --window and --plain-max-frames must be >= 1, --mid-questions and --min-questions >= 0"
        )
    config = NeedleEvalConfig(
        model=args.model,
        lengths=lengths,
        streams=args.streams,
        min_questions=args.min_questions,
        configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
        window=args.window,
        query_context=args.query_context,
        max_position_span=args.max_position_span,
        mid_questions=args.mid_questions,
        plain_max_frames=args.plain_max_frames,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    check_model_options(args)
    answer_configs = config.answer_configs()  # a bad name fails here, before the model loads
    result = run_needle_eval(config, log=line_printer(args.json))
    if write_results(args, result, plot):
        return 0
    print("\naccuracy (questions) per needle distance, all lengths:")
    print(distance_table(result, answer_configs))
    hits = result.hit_rate()
    if hits:
        print("\nshare of questions whose attended blocks held the needle (retrieval configurations):")
        for name, per in hits.items():
            print(
                f"{name:>18}: "
                + "  ".join(
                    f"{k}: {v['rate']:.2f} ({v['n']})"
                    for k, v in sorted(per.items(), key=lambda x: int(x[0]))
                )
            )
    print("\nmedian time to first token (s) per stream length:")
    for name, per in result.ttft().items():
        print(
            f"{name:>18}: "
            + "  ".join(f"{k}: {v:.4f}" for k, v in sorted(per.items(), key=lambda x: int(x[0])))
        )
    stored: dict[int, list[int]] = {}
    for s in result.streams:
        stored.setdefault(s.length, []).append(s.bytes_stored)
    print(
        "\nKV bytes stored at the end of a stream: "
        + "  ".join(f"{k}: {max(v):,}" for k, v in stored.items())
    )
    return 0
