"""``streamvlm eval streams``: its parser (light: no torch at start-up) and command."""

from __future__ import annotations

import argparse
import json

from ..cli_options import (
    add_json_option,
    add_memory_options,
    add_model_options,
    check_model_options,
    line_printer,
)
from ..errors import ConfigError


def add_streams_parser(evals) -> argparse.ArgumentParser:
    """Add ``streams`` to ``eval``'s evaluations and return its parser."""
    from .streams import StreamEvalConfig

    d = StreamEvalConfig()
    s = evals.add_parser(
        "streams",
        help="long synthetic streams with their sidecar questions: accuracy per question family",
        description=(
            "Write each seed's world as `streamvlm synth make --seconds S --seed N` does, decode it at "
            "1 fps as `watch` does, stream it through a session and ask every sidecar question at its "
            "time with each configuration: `default` (no options, what `watch` does) or a name of "
            "`eval needle`'s grammar (e.g. top2-contiguous-w2, on a session with --query-context and --window). "
            "Prints correct/asked per family and configuration, or --json."
        ),
    )
    add_model_options(s, model=d.model, loading=False)
    s.add_argument("--seconds", type=float, default=d.seconds, help=f"stream length (default: {d.seconds:g})")
    s.add_argument(
        "--seeds",
        default=",".join(map(str, d.seeds)),
        help="world seeds, as synth make --seed (default: 0,1,2)",
    )
    s.add_argument(
        "--questions",
        type=int,
        default=d.questions,
        help=f"sidecar questions per stream (default: {d.questions})",
    )
    s.add_argument(
        "--configs", default=",".join(d.configs), help=f"configurations (default: {','.join(d.configs)})"
    )
    add_memory_options(s, "query_context", "window", query_context=d.query_context)
    add_json_option(s)
    s.set_defaults(func=cmd_eval_streams)
    return s


def cmd_eval_streams(args: argparse.Namespace) -> int:
    """Run ``streamvlm eval streams``; bad seeds and configuration names fail before the model loads."""
    from .streams import StreamEvalConfig, run_stream_eval

    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"--seeds must be integers separated by commas, e.g. 0,1,2; got {args.seeds!r}"
        ) from None
    config = StreamEvalConfig(
        model=args.model,
        seconds=args.seconds,
        seeds=seeds,
        questions=args.questions,
        configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
        query_context=args.query_context,
        window=args.window,
        device=args.device,
        dtype=args.dtype,
    )
    check_model_options(args)
    result = run_stream_eval(config, log=line_printer(args.json))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0
