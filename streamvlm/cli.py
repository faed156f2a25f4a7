"""Command line: ``streamvlm COMMAND``. This module only wires the commands together.

Each command lives beside the package it drives, as ``add_<command>_parser(subparsers)``
that stores its handler in ``func``: ``watch`` in ``runtime/cli.py``, ``info`` in
``info.py``, ``bench`` in ``bench/cli.py``, ``synth`` in ``synth/cli.py``, ``train-tiny``
in ``train/cli.py``, ``serve`` in ``servers/cli.py``, ``stream`` in ``client/cli.py``,
``demo`` in ``demos/cli.py``, ``eval`` in ``eval/cli.py``. The options they share are
declared once, in ``cli_options.py``.

Exit codes: 0 ok; 2 bad input or configuration (any ``StreamVLMError`` and argument
errors, printed as one ``error: ...`` line on stderr); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .bench.cli import add_bench_parser
from .cli_options import DEFAULT_MODEL, run_command
from .client.cli import add_stream_parser
from .demos.cli import add_demo_parser
from .eval.cli import add_eval_parser
from .info import add_info_parser, streamvlm_version
from .runtime.cli import add_watch_parser
from .servers.cli import add_serve_parser
from .synth.cli import add_synth_parser
from .train.cli import add_train_parser

__all__ = ["DEFAULT_MODEL", "build_parser", "main"]  # DEFAULT_MODEL: what every command loads unless told

COMMANDS = (  # in the order `streamvlm --help` lists them
    add_watch_parser,
    add_info_parser,
    add_bench_parser,
    add_synth_parser,
    add_train_parser,
    add_serve_parser,
    add_stream_parser,
    add_demo_parser,
    add_eval_parser,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``streamvlm`` parser with every command; building it imports no torch."""
    parser = _Parser(
        prog="streamvlm",
        description="Stream a video into a vision-language model and ask about what it has seen.",
    )
    parser.add_argument("--version", action="version", version=f"streamvlm {streamvlm_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``streamvlm`` console script: parse ``argv`` (default: ``sys.argv[1:]``), run the
    command, return its exit code."""
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
