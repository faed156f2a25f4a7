"""``streamvlm synth make``: write a synthetic world as a video and a JSON sidecar.

``add_synth_parser(subparsers)`` adds the ``synth`` command to a parser's subcommands
(each command stores its handler in ``func``, as ``streamvlm.cli`` expects);
``python -m streamvlm.synth`` runs it on its own.
"""

from __future__ import annotations

import argparse
import sys

from ..cli_options import run_command
from ..errors import ConfigError


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``synth`` (with its ``make`` action) to ``subparsers`` and return its parser."""
    synth = subparsers.add_parser(
        "synth",
        help="synthetic videos with questions whose answers follow from their events",
        description="Synthetic worlds: coloured shapes (some showing digits) over drifting backgrounds.",
    )
    actions = synth.add_subparsers(dest="synth_action", metavar="ACTION", parser_class=type(synth))
    actions.required = True
    make = actions.add_parser(
        "make",
        help="write a world as an H.264 video plus a JSON sidecar (events and questions)",
        description=(
            "Render a synthetic world and write OUT (.mp4/.mkv/.mov) and OUT with .json: the world's "
            "arguments, scenes, events and a set of questions with answers and distances."
        ),
    )
    make.add_argument("--seconds", type=float, required=True, help="stream length in seconds")
    make.add_argument("--out", required=True, help="video file to write (.mp4, .mkv or .mov)")
    make.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    make.add_argument("--fps", type=float, default=1.0, help="frames per second of stream time (default 1)")
    make.add_argument("--size", type=int, default=112, help="frame side in px, even, >= 48 (default 112)")
    make.add_argument("--questions", type=int, default=16, help="questions in the sidecar (default 16)")
    make.add_argument(
        "--events-per-minute", type=float, default=4.0, help="rate of object events (default 4)"
    )
    make.add_argument(
        "--max-on-screen", type=int, default=1, choices=(1, 2), help="objects on screen at once (default 1)"
    )
    make.set_defaults(func=cmd_make)
    return synth


def cmd_make(args: argparse.Namespace) -> int:
    """Handler of ``synth make``: raises ``ConfigError`` for options that cannot work."""
    from .files import sidecar_path, write
    from .questions import sample_questions
    from .world import World

    if args.questions < 0:
        raise ConfigError(f"--questions must be >= 0, got {args.questions}")
    if not args.seconds * args.fps >= 1:
        raise ConfigError(f"--seconds x --fps must give at least one frame, got {args.seconds} x {args.fps}")
    world = World(
        args.seed,
        args.seconds,
        args.fps,
        args.size,
        events_per_minute=args.events_per_minute,
        max_on_screen=args.max_on_screen,
    )
    questions = sample_questions(world, args.questions, [args.seed, 3])
    out = write(world, args.out, questions=questions)
    print(
        f"wrote {out} ({world.n_frames} frames, {len(world.events)} events, {len(world.scenes)} scenes) "
        f"and {sidecar_path(out)} ({len(questions)} questions)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m streamvlm.synth``: same errors and exit codes as ``streamvlm``."""
    parser = argparse.ArgumentParser(prog="streamvlm")  # usage reads as the wired-in command
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_synth_parser(sub)
    args = parser.parse_args(["synth", *(sys.argv[1:] if argv is None else argv)])
    return run_command(args)
