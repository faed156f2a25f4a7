"""What every ``streamvlm`` command shares: its options, declared once, and how it runs.

Each command module (``runtime/cli.py`` for ``watch``, ``bench/cli.py``, ...) adds its own
options and takes the shared ones from here: the model and where it runs
(:func:`add_model_options`), session memory (:func:`add_memory_options`, turned into a
``MemoryConfig`` by :func:`memory_config`), answer length, output (``--json``,
``--plot``) and the address a server listens on. :func:`run_command` is the one place
a parsed command starts.

Light on purpose: the parsers are built at CLI start-up, before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import POSITION_MODES, QUERY_CONTEXTS, MemoryConfig
from .errors import ConfigError, StreamVLMError
from .models.bundled import TINY_SYNTH
from .output import configure_output

if TYPE_CHECKING:
    from .runtime.engine import StreamVLM

# The model a command loads when none is given: the ~2M-parameter model the project
# trained on its synthetic world (models/checkpoints/, docs/training.md). It answers
# questions about videos of that world (assets/shapes.mp4); on other videos its answers
# are words of that world, not descriptions.
DEFAULT_MODEL = TINY_SYNTH
DEFAULT_MAX_NEW_TOKENS = 64
QUIT_WORDS = {"quit", "exit", ":q"}  # typed instead of a question, they end a prompt
LOOPBACK = ("127.0.0.1", "::1", "localhost")

# ------------------------------------------------------------------ the model


def add_model_options(
    parser: argparse.ArgumentParser,
    model: str | None = DEFAULT_MODEL,
    device: bool = True,
    loading: bool = True,
) -> None:
    """The options of a command that loads a model: ``--model`` (default ``model``; ``None``:
    the command names its models otherwise), ``--device``, ``--dtype`` (unless ``device`` is
    false: the command picks them itself), ``--attn`` and ``--max-pixels`` (unless
    ``loading`` is false too: benchmarks and evaluations load with the defaults, so their
    figures compare) and ``--verbose``."""
    if model is not None:
        parser.add_argument("--model", default=model, help=f"model name, path or hub id (default: {model})")
    if device:
        parser.add_argument(
            "--device",
            default=None,
            help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)",
        )
        parser.add_argument(
            "--dtype",
            default=None,
            help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)",
        )
    if device and loading:
        parser.add_argument(
            "--attn",
            default=None,
            metavar="IMPL",
            help="attention of the vision tower: sdpa, flash_attention_2 (CUDA, needs flash-attn) or eager "
            "(default: sdpa)",
        )
        parser.add_argument(
            "--max-pixels",
            type=int,
            default=None,
            metavar="N",
            help="most pixels a Qwen2.5-VL frame is resized to: it sets the visual tokens per frame and so "
            "the memory per hour (docs/memory.md); default: the checkpoint's video processor config, else "
            "200704 (256 x 28 x 28)",
        )
    add_verbose_option(parser)


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: let third-party libraries print their warnings and progress bars."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the warnings and progress bars of the libraries underneath (transformers, "
        "weight loading); default: only streamvlm's own lines",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``StreamVLM.from_pretrained`` / ``load_backend`` keywords the options of
    :func:`add_model_options` give (those not given are left out: the engine chooses)."""
    given = {
        "device": args.device,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "max_pixels": args.max_pixels,
    }
    return {k: v for k, v in given.items() if v is not None}


def load_model(args: argparse.Namespace) -> StreamVLM:
    """The engine for ``args.model`` with the options of :func:`add_model_options`."""
    from . import StreamVLM

    return StreamVLM.from_pretrained(args.model, **model_options(args))


# --------------------------------------------------------------- session memory


@dataclasses.dataclass(frozen=True)
class _MemoryOption:
    """One command-line option that sets a ``MemoryConfig`` field."""

    flag: str
    field: str  # the MemoryConfig field it sets
    help: str  # "{default}" stands for the command's default
    unset: str = ""  # how the help reads a default of None ("not given")
    kwargs: dict = dataclasses.field(default_factory=dict)  # more add_argument keywords


def _count_or_all(text: str) -> int | None:
    """``--top-k``'s value: a count, or ``all`` (``None``: every block)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks or 'all', got {text!r}") from None


_MEMORY_OPTIONS: dict[str, _MemoryOption] = {  # by argparse dest
    "window": _MemoryOption(
        "--window",
        "window",
        "frames of recent context each chunk attends to while encoding (default: {default})",
        unset="the server's",
        kwargs={"type": int, "metavar": "N"},
    ),
    "top_k": _MemoryOption(
        "--top-k",
        "top_k",
        "answer over the N blocks retrieved for each question (+ the answer window), or 'all'; "
        "default: {default}",
        unset="every block that fits --answer-tokens",
        kwargs={"type": _count_or_all, "metavar": "N"},
    ),
    "answer_window": _MemoryOption(
        "--answer-window",
        "answer_window",
        "with --top-k: frames of the newest video every answer sees besides the retrieved "
        "blocks, e.g. 2 (docs/retrieval.md); default: {default}",
        unset="the --window",
        kwargs={"type": int, "metavar": "N"},
    ),
    "answer_tokens": _MemoryOption(
        "--answer-tokens",
        "answer_tokens",
        "most tokens one question holds on the device (sink, blocks, question, answer); past it "
        "retrieval fills the budget best first (docs/retrieval.md); default: {default}",
        unset="what --device-bytes holds of full-precision KV, at most the position span",
        kwargs={"type": int, "metavar": "N"},
    ),
    "max_position_span": _MemoryOption(
        "--max-position-span",
        "max_position_span",
        "no forward uses a position at or past N: beyond it the attended blocks are re-based after "
        "the sinks (docs/architecture.md); default: {default}",
        unset="the model's max_position_embeddings",
        kwargs={"type": int, "metavar": "N"},
    ),
    "query_context": _MemoryOption(
        "--query-context",
        "query_context",
        "what retrieval reads the question over: the --window, or the sink alone "
        "(docs/retrieval.md; default: {default})",
        unset=MemoryConfig.query_context,
        kwargs={"choices": QUERY_CONTEXTS},
    ),
    "positions": _MemoryOption(
        "--positions",
        "position_mode",
        "with --top-k: keep retrieved blocks at their stream positions, or re-rotate them "
        "next to the question (docs/retrieval.md; default: {default})",
        unset=MemoryConfig.position_mode,
        kwargs={"choices": POSITION_MODES},
    ),
    "prune": _MemoryOption(
        "--prune",
        "prune_threshold",
        "drop visual tokens at least TAU alike (cosine) to the last kept one at their place, "
        "e.g. 0.95 (docs/pruning.md); default: {default}",
        unset="keep every token",
        kwargs={"type": float, "metavar": "TAU"},
    ),
    "device_bytes": _MemoryOption(
        "--device-bytes",
        "device_bytes",
        "bytes of blocks the device tier holds (default: {default})",
        kwargs={"type": int, "metavar": "B"},
    ),
    "host_bytes": _MemoryOption(
        "--host-bytes",
        "host_bytes",
        "bytes of blocks host RAM holds (default: {default})",
        kwargs={"type": int, "metavar": "B"},
    ),
    "host_codec": _MemoryOption(
        "--host-codec",
        "host_codec",
        "how blocks are stored in host RAM, e.g. vidkv or kivi2 (docs/quantization.md; default: {default})",
        kwargs={"metavar": "CODEC"},
    ),
    "disk_codec": _MemoryOption(
        "--disk-codec",
        "disk_codec",
        "how blocks are stored on disk (default: {default})",
        kwargs={"metavar": "CODEC"},
    ),
    "disk_dir": _MemoryOption(
        "--disk-dir",
        "disk_dir",
        "keep the session on disk in DIR (an empty or new directory), so it can be resumed",
        kwargs={"metavar": "DIR"},
    ),
}


def add_memory_options(parser: argparse.ArgumentParser, *names: str, **defaults: Any) -> None:
    """Add the session memory options ``names`` (argparse dests: ``window``, ``top_k``,
    ``answer_window``, ``answer_tokens``, ``max_position_span``, ``query_context``,
    ``positions``, ``prune``, ``device_bytes``, ``host_bytes``, ``host_codec``,
    ``disk_codec``, ``disk_dir``).

    Each defaults to the ``MemoryConfig`` field it sets unless ``defaults`` names another
    value; ``None`` means "not given", which :func:`memory_config` leaves to ``MemoryConfig``.
    """
    unknown = (set(names) | set(defaults)) - _MEMORY_OPTIONS.keys()
    if unknown:  # a mistake in a command module, not in the user's input
        raise ValueError(f"no memory option {sorted(unknown)}; known: {', '.join(_MEMORY_OPTIONS)}")
    for name in names:
        option = _MEMORY_OPTIONS[name]
        default = defaults.get(name, getattr(MemoryConfig, option.field))
        shown = option.unset if default is None else default
        parser.add_argument(
            option.flag, default=default, help=option.help.format(default=shown), **option.kwargs
        )


def memory_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``MemoryConfig`` fields set by the parsed memory options (those given, not ``None``)."""
    overrides = {}
    for name, option in _MEMORY_OPTIONS.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides[option.field] = value
    return overrides


def memory_config(args: argparse.Namespace) -> MemoryConfig:
    """The ``MemoryConfig`` the parsed memory options ask for; the rest keeps its defaults.

    Raises:
        ConfigError: a value ``MemoryConfig`` rejects.
    """
    return MemoryConfig(**memory_overrides(args))


# ------------------------------------------------------------ answers and output


def add_max_new_tokens_option(parser: argparse.ArgumentParser, default: int = DEFAULT_MAX_NEW_TOKENS) -> None:
    """``--max-new-tokens``: the longest answer."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=default,
        metavar="N",
        help=f"longest answer in tokens (default: {default})",
    )


def add_json_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--json``: one JSON document on stdout; ``note`` says what else it changes."""
    parser.add_argument(
        "--json", action="store_true", help=f"print one JSON document on stdout and nothing else{note}"
    )


def add_plot_option(parser: argparse.ArgumentParser) -> None:
    """``--plot FILE``: a PNG of the result."""
    parser.add_argument("--plot", metavar="FILE", help="write a PNG plot")


def line_printer(json_output: bool) -> Callable[[str], None]:
    """Where a command's progress lines go: stderr when stdout carries the JSON document."""
    if json_output:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return print


def write_results(
    args: argparse.Namespace, result: Any, plot: Callable[[Any, str], None] | None = None
) -> bool:
    """Write a command's result where its options say: the ``--plot`` image, and with
    ``--json`` the result's ``to_dict()`` as one JSON document on stdout. Returns whether
    the JSON went out (a text report would then be out of place)."""
    if plot is not None and args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return args.json


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


# ------------------------------------------------------------------ servers


def add_listen_options(parser: argparse.ArgumentParser, port: int) -> None:
    """``--host`` and ``--port`` (default ``port``) of a command that serves."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=port, help=f"port to listen on; 0 picks a free one (default: {port})"
    )


def check_port(port: int) -> None:
    """Raises ``ConfigError`` unless ``port`` is one a socket can bind (0: any free one)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")


def announce_listening(what: str, host: str, port: int, path: str = "", open_to: str | None = None) -> None:
    """Say on stderr where a server listens (``streamvlm: {what} on http://...``), after a
    warning when it is reachable beyond this machine: ``open_to`` says who could use it,
    ``None`` when nobody but the owner can (a key guards it, or it is on loopback)."""
    if open_to is not None and host not in LOOPBACK:
        print(f"warning: listening on {host} {open_to}", file=sys.stderr)
    print(f"streamvlm: {what} on http://{url_host(host)}:{port}{path}", file=sys.stderr, flush=True)


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


# -------------------------------------------------------------- running one


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command (``args.func(args)``) and return its exit code.

    0 ok; 2 bad input or configuration (any ``StreamVLMError``, printed as one
    ``error: ...`` line on stderr); 130 interrupted (Ctrl-C, ``interrupted`` on stderr).
    """
    # third-party warnings, logs and progress bars only with --verbose (commands without it stay quiet)
    configure_output(verbose=getattr(args, "verbose", False))
    try:
        return args.func(args)
    except StreamVLMError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
