"""``streamvlm eval needle``: the parser (light: no torch at start-up) and the command."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli_options import add_run_options, parse_lengths
from ..config import QUERY_CONTEXTS
from ..errors import ConfigError


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` (with its ``needle`` evaluation) to ``subparsers`` and return its parser."""
    from .needle import NeedleEvalConfig

    d = NeedleEvalConfig()
    ev = subparsers.add_parser("eval", help="accuracy evaluations with the trained tiny model")
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
    n.add_argument("--model", default=d.model, help=f"model name or path (default: {d.model})")
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
    n.add_argument("--window", type=int, default=d.window, help=f"recent frames (default: {d.window})")
    n.add_argument(
        "--query-context",
        choices=QUERY_CONTEXTS,
        default=d.query_context,
        help="what retrieval reads the question over: the window, or the sink alone (MemoryConfig."
        f"query_context; default: {d.query_context})",
    )
    n.add_argument(
        "--mid-questions", type=int, default=d.mid_questions, help="mid-stream ask times per stream"
    )
    n.add_argument("--plain-max-frames", type=int, default=d.plain_max_frames)
    n.add_argument("--seed", type=int, default=d.seed)
    add_run_options(n)
    n.set_defaults(func=cmd_eval_needle)
    c = evals.add_parser(
        "clips",
        help="held-out short clips: did the model learn the task? accuracy per question family",
        description=(
            "Score a model trained on the synthetic world on held-out 4-16 frame clips (one to three "
            "objects, question families drawn uniformly) by greedy exact match; a table or --json."
        ),
    )
    c.add_argument("--model", default=d.model, help=f"model name or path (default: {d.model})")
    c.add_argument("--clips", type=int, default=400, help="held-out clips (default: 400)")
    c.add_argument("--seed", type=int, default=12345, help="seed of the held-out clips (default: 12345)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_eval_clips)
    return ev


def cmd_eval_clips(args: argparse.Namespace) -> int:
    from .clips import run_clip_eval

    if args.clips < 1:
        raise ConfigError(f"--clips must be >= 1, got {args.clips}")
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    result = run_clip_eval(args.model, args.clips, args.seed, log=log)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def _csv(values) -> str:
    return ",".join(map(str, values))


def cmd_eval_needle(args: argparse.Namespace) -> int:
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
        mid_questions=args.mid_questions,
        plain_max_frames=args.plain_max_frames,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    answer_configs = config.answer_configs()  # a bad name fails here, before the model loads
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    result = run_needle_eval(config, log=log)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
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
