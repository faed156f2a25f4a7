"""Options shared by the measuring commands (``bench stream``, ``eval needle``).

Light on purpose: the parsers are built at CLI start-up, before torch is imported.
"""

from __future__ import annotations

import argparse

from .errors import ConfigError


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--json`` and ``--plot``, with the same meaning everywhere."""
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout and nothing else"
    )
    parser.add_argument("--plot", metavar="FILE", help="write a PNG plot")


def parse_lengths(text: str, minimum: int, example: str, flag: str = "--lengths") -> tuple[int, ...]:
    """``flag``: comma-separated frame counts, each at least ``minimum``.

    Raises:
        ConfigError: anything else, with ``example`` in the message.
    """
    try:
        lengths = tuple(int(x) for x in text.split(","))
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < minimum:
        raise ConfigError(
            f"{flag} takes comma-separated whole numbers >= {minimum}, e.g. {example}; got {text!r}"
        )
    return lengths
