"""The options the `streamvlm` commands share (streamvlm/cli_options.py): declared once,
the same in every command, turned into a MemoryConfig in one place. No model is loaded."""

from __future__ import annotations

import argparse

import pytest

from streamvlm.cli import build_parser
from streamvlm.cli_options import (
    add_memory_options,
    byte_size,
    byte_size_text,
    memory_config,
    memory_overrides,
    run_command,
)
from streamvlm.config import MemoryConfig
from streamvlm.errors import ConfigError

# every command that loads a model, as argv; the others load none
LOADS_A_MODEL = [
    ["watch"],
    ["bench", "stream"],
    ["bench", "quant"],
    ["bench", "serve"],
    ["train-tiny"],
    ["serve"],
    ["demo"],
    ["eval", "needle"],
    ["eval", "clips"],
]
LOADS_NO_MODEL = [["info"], ["synth", "make"], ["stream"]]


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(argv, parser)`` for every command and sub-command under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [*path, name], sub
                yield from command_parsers(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


PARSERS = {" ".join(argv): p for argv, p in command_parsers(build_parser())}


@pytest.mark.parametrize("argv", LOADS_A_MODEL, ids=" ".join)
def test_every_command_that_loads_a_model_takes_verbose(argv):
    action = options(PARSERS[" ".join(argv)])["--verbose"]
    assert action.default is False and action.nargs == 0


@pytest.mark.parametrize("argv", LOADS_NO_MODEL, ids=" ".join)
def test_commands_that_load_no_model_have_no_verbose(argv):
    assert "--verbose" not in options(PARSERS[" ".join(argv)])


@pytest.mark.parametrize("flag", ["--device", "--dtype", "--verbose", "--window", "--top-k", "--json"])
def test_a_shared_option_reads_the_same_in_every_command(flag):
    """Declared in one place: the help differs at most from its first parenthesis on
    (the command's default, a note)."""
    helps = {
        name: options(p)[flag].help.split("(")[0].strip() for name, p in PARSERS.items() if flag in options(p)
    }
    assert len(helps) >= 2 and len(set(helps.values())) == 1, helps


def parse_memory(*argv: str, **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_memory_options(parser, "window", "top_k", "positions", "prune", "host_codec", "disk_dir", **defaults)
    return parser.parse_args(argv)


def test_memory_config_sets_the_fields_of_the_options_given():
    args = parse_memory("--window", "8", "--top-k", "2", "--positions", "contiguous", "--prune", "0.9")
    assert memory_config(args) == MemoryConfig(
        window=8, top_k=2, position_mode="contiguous", prune_threshold=0.9
    )
    assert memory_config(parse_memory()) == MemoryConfig()  # nothing given: MemoryConfig's defaults


def test_memory_options_are_not_given_unless_the_command_says_otherwise():
    """Not given (None), an option leaves its field to the model's recommendation, else
    MemoryConfig's default (``memory_overrides`` lists only the given ones); ``--top-k all``
    is given: every block, whatever a checkpoint recommends."""
    args = parse_memory(window=4)
    assert args.window == 4 and args.positions is None and args.host_codec is None and args.top_k is None
    assert memory_overrides(args) == {"window": 4}
    assert memory_config(args).position_mode == MemoryConfig.position_mode
    assert memory_overrides(parse_memory("--top-k", "all")) == {"top_k": None}
    assert memory_overrides(parse_memory("--top-k", "3")) == {"top_k": 3}


def test_memory_config_reports_bad_values_as_config_errors():
    with pytest.raises(ConfigError, match="window"):
        memory_config(parse_memory("--window", "-1"))


def test_an_unknown_memory_option_is_a_programming_error():
    with pytest.raises(ValueError, match="no memory option"):
        add_memory_options(argparse.ArgumentParser(), "windows")


def test_run_command_prints_an_error_on_one_line(capsys):
    def fails(args):
        raise ConfigError("first line\n  second line")

    assert run_command(argparse.Namespace(func=fails)) == 2
    assert capsys.readouterr().err == "error: first line second line\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100", 100), ("0", 0), ("64k", 64 << 10), ("256MiB", 256 << 20), ("2GiB", 2 << 30), ("1 tb", 1 << 40)],
)
def test_byte_budgets_take_binary_units(text, expected):
    assert byte_size(text) == expected


@pytest.mark.parametrize("text", ["-1", "1.5G", "lots", "2GB2", ""])
def test_byte_budgets_refuse_what_is_not_a_size(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected bytes"):
        byte_size(text)


def test_byte_budget_defaults_read_back():
    for n in (1 << 30, 4 << 30, 1536 << 20, 1000):
        assert byte_size(byte_size_text(n)) == n
