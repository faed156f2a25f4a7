"""What every ``streamvlm`` command shares: its options, declared once, and how it runs.

Each command module (``runtime/cli.py`` for ``watch``, ``bench/cli.py``, ...) adds its own
options and takes the shared ones from here: the model and where it runs
(:func:`add_model_options`), session memory (:func:`add_memory_options`, turned into a
``MemoryConfig`` by :func:`memory_config`), answer length, output (``--json``,
``--plot``) and the address a server listens on. :func:`run_command` is the one place
a parsed command starts.

Light on purpose: the parsers are built at CLI start-up, before torch is imported, and
the checks here (:func:`check_model_options`, :func:`check_memory_options`, the path
checks) run before it too, so that a command refuses a mistake in well under a second
instead of after loading a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import (
    ATTENTION_IMPLEMENTATIONS,
    DTYPE_NAMES,
    EVERY_BLOCK,
    MAX_NEW_TOKENS_LIMIT,
    POSITION_MODES,
    QUERY_CONTEXTS,
    RESUME_OVERRIDABLE,
    MemoryConfig,
)
from .errors import ConfigError, StreamVLMError, VideoOpenError
from .models.bundled import TINY_SYNTH, bundled_path
from .models.catalog import check_model_name
from .output import configure_output
from .registry import BLOCK_CODECS

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
# The --device names torch takes that streamvlm runs on (the loader checks them again)
DEVICE_NAME = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")
# Where a Linux machine shows a GPU that torch could use as "cuda": the NVIDIA driver, or
# ROCm's kernel driver (ROCm builds of torch call AMD GPUs "cuda" too)
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")

# ------------------------------------------------------------------ value types


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """argparse type of a byte budget: a whole number of bytes, or one with a binary unit
    (``512MiB``, ``2G``, ``64k``: powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected bytes, e.g. 268435456, 256MiB or 2GiB; got {text!r}")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2)]


def byte_size_text(n: int) -> str:
    """``n`` bytes as :func:`byte_size` reads it, in the largest unit that divides it (``1GiB``)."""
    for unit, size in reversed(_BYTE_UNITS.items()):
        if unit and n and n % size == 0:
            return f"{n // size}{unit.upper()}iB"
    return str(n)


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
            choices=tuple(DTYPE_NAMES),
            metavar="DTYPE",
            help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)",
        )
    if device and loading:
        parser.add_argument(
            "--attn",
            default=None,
            choices=ATTENTION_IMPLEMENTATIONS,
            metavar="IMPL",
            help="attention of the vision tower: sdpa, flash_attention_2 (CUDA, needs flash-attn) or eager "
            "(default: sdpa)",
        )
        parser.add_argument(
            "--max-pixels",
            type=positive_int,
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


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse, before torch is imported, model options that surely cannot work: a
    ``--model`` that names no model (not a named one, no such checkpoint directory, not
    a hub id; models/catalog.py), a bundled model whose files are missing, a ``--device``
    torch does not name, ``--device cuda`` (or ``cuda:N``) on a Linux machine with no GPU
    driver, and ``--attn flash_attention_2`` where it cannot run. The loader
    (models/loading.py) checks everything again once torch is there; this only answers
    the plain cases fast.

    Raises:
        ModelNotFoundError: naming the model and what to pass instead.
        ConfigError: naming the option and what to use instead.
    """
    model = getattr(args, "model", None)
    if model is not None:
        check_model_name(model)
        bundled_path(model)  # a bundled model's files must be here; the error says how to make them
    device = getattr(args, "device", None)
    if device is not None and not DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"--device {device}: unknown device; use cpu, cuda or cuda:N")
    on_cuda = device.split(":")[0] == "cuda" if device is not None else gpu_driver_present()
    if device is not None and on_cuda and not gpu_driver_present():
        raise ConfigError(f"--device {device}: this machine has no GPU driver, so no CUDA; use --device cpu")
    if getattr(args, "attn", None) == "flash_attention_2":
        _check_flash_attention(on_cuda, getattr(args, "dtype", None))


def _check_flash_attention(on_cuda: bool, dtype: str | None) -> None:
    """Refuse ``--attn flash_attention_2`` off CUDA, in float32 or without its package."""
    if not on_cuda:
        raise ConfigError("--attn flash_attention_2 runs on CUDA only; use --attn sdpa here")
    if dtype is not None and DTYPE_NAMES[dtype] == "float32":
        raise ConfigError(f"--attn flash_attention_2 needs float16 or bfloat16 weights, not --dtype {dtype}")
    if importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "--attn flash_attention_2 needs the flash-attn package, which is not installed; "
            "pip install flash-attn --no-build-isolation, or use --attn sdpa"
        )


def gpu_driver_present() -> bool:
    """Whether this machine may have a GPU torch can use as ``cuda``: ``False`` only where
    that is sure without importing torch (Linux, no NVIDIA or ROCm driver, no ``nvidia-smi``)."""
    if not sys.platform.startswith("linux"):
        return True  # no cheap sure answer elsewhere: the loader decides
    return any(os.path.exists(p) for p in GPU_DRIVER_PATHS) or shutil.which("nvidia-smi") is not None


def load_model(args: argparse.Namespace) -> StreamVLM:
    """The engine for ``args.model`` with the options of :func:`add_model_options`
    (checked first by :func:`check_model_options`)."""
    check_model_options(args)
    from . import StreamVLM

    return StreamVLM.from_pretrained(args.model, **model_options(args))


# --------------------------------------------------------------- session memory


@dataclasses.dataclass(frozen=True)
class _MemoryOption:
    """One command-line option that sets a ``MemoryConfig`` field."""

    flag: str
    field: str  # the MemoryConfig field it sets
    help: str  # "{default}" stands for the command's default
    unset: str | None = None  # how the help reads "not given" (None: MemoryConfig's default value)
    kwargs: dict = dataclasses.field(default_factory=dict)  # more add_argument keywords


# how the help of an option a checkpoint may recommend (models/recommended.py) reads "not given"
_RECOMMENDED = "what the model recommends (the bundled model: {value}), else {fallback}"


def _count_or_all(text: str) -> int | str:
    """``--top-k``'s value: a count, or ``all`` (``EVERY_BLOCK``)."""
    if text.strip().lower() == EVERY_BLOCK:
        return EVERY_BLOCK
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks >= 1 or 'all', got {text!r}") from None


def block_codec_name(text: str) -> str:
    """``--host-codec`` / ``--disk-codec``'s value: a block codec's name (an old one becomes
    today's); the names are declared torch-free, so a typo is refused at once."""
    try:
        return BLOCK_CODECS.canonical(text.strip())
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(BLOCK_CODECS.names())} (docs/quantization.md); got {text!r}"
        ) from None


_MEMORY_OPTIONS: dict[str, _MemoryOption] = {  # by argparse dest
    "window": _MemoryOption(
        "--window",
        "window",
        "frames of recent context each chunk attends to while encoding; 0 encodes each chunk "
        "over the system prompt alone (default: {default})",
        kwargs={"type": int, "metavar": "N"},
    ),
    "top_k": _MemoryOption(
        "--top-k",
        "top_k",
        "answer over the N blocks retrieved for each question (+ the answer window), or 'all'; "
        "default: {default}",
        unset=_RECOMMENDED.format(value=2, fallback="every block that fits --answer-tokens"),
        kwargs={"type": _count_or_all, "metavar": "N"},
    ),
    "answer_window": _MemoryOption(
        "--answer-window",
        "answer_window",
        "frames of the newest video every answer sees; the rest of its context is retrieved "
        "(--top-k, or past --answer-tokens), e.g. 2 (docs/retrieval.md); default: {default}",
        unset=_RECOMMENDED.format(value=2, fallback="the --window"),
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
        unset=_RECOMMENDED.format(value="sink", fallback=MemoryConfig.query_context),
        kwargs={"choices": QUERY_CONTEXTS},
    ),
    "positions": _MemoryOption(
        "--positions",
        "position_mode",
        "keep the blocks a question attends at their stream positions, or re-rotate them "
        "next to the question (docs/retrieval.md; default: {default})",
        unset=_RECOMMENDED.format(value="contiguous", fallback=MemoryConfig.position_mode),
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
        "bytes of blocks the device tier holds, e.g. 256MiB; older blocks move to host RAM "
        "(docs/memory.md; default: {default})",
        unset=byte_size_text(MemoryConfig.device_bytes),
        kwargs={"type": byte_size, "metavar": "BYTES"},
    ),
    "host_bytes": _MemoryOption(
        "--host-bytes",
        "host_bytes",
        "bytes of blocks host RAM holds, e.g. 2GiB; older blocks move to --disk-dir, or are "
        "dropped without it (default: {default})",
        unset=byte_size_text(MemoryConfig.host_bytes),
        kwargs={"type": byte_size, "metavar": "BYTES"},
    ),
    "host_codec": _MemoryOption(
        "--host-codec",
        "host_codec",
        "how blocks are stored in host RAM, e.g. vidkv or kivi2 (docs/quantization.md; default: {default})",
        kwargs={"type": block_codec_name, "metavar": "CODEC"},
    ),
    "disk_codec": _MemoryOption(
        "--disk-codec",
        "disk_codec",
        "with --disk-dir: how blocks are stored on disk (default: {default})",
        kwargs={"type": block_codec_name, "metavar": "CODEC"},
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

    Each defaults to ``None``, "not given", unless ``defaults`` names a value: an option
    not given takes what the model's checkpoint recommends (``StreamVLM.memory``), else
    ``MemoryConfig``'s default, and a resumed session keeps what it saved.
    """
    unknown = (set(names) | set(defaults)) - _MEMORY_OPTIONS.keys()
    if unknown:  # a mistake in a command module, not in the user's input
        raise ValueError(f"no memory option {sorted(unknown)}; known: {', '.join(_MEMORY_OPTIONS)}")
    for name in names:
        option = _MEMORY_OPTIONS[name]
        default = defaults.get(name)
        unset = option.unset if option.unset is not None else getattr(MemoryConfig, option.field)
        shown = unset if default is None else default
        parser.add_argument(
            option.flag, default=default, help=option.help.format(default=shown), **option.kwargs
        )


def memory_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``MemoryConfig`` fields set by the parsed memory options (those given, not ``None``;
    ``--top-k all`` sets ``top_k=None``); build the session's with ``engine.memory(**them)``."""
    overrides = {}
    for name, option in _MEMORY_OPTIONS.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides[option.field] = None if value == EVERY_BLOCK else value
    return overrides


def fixed_memory_flags(args: argparse.Namespace) -> list[str]:
    """The flags of the given memory options that cannot change a saved session: they set
    what it stores (fields outside ``RESUME_OVERRIDABLE``, which resuming enforces)."""
    fields = memory_overrides(args)
    return [
        o.flag for o in _MEMORY_OPTIONS.values() if o.field in fields and o.field not in RESUME_OVERRIDABLE
    ]


def memory_config(args: argparse.Namespace) -> MemoryConfig:
    """The ``MemoryConfig`` the parsed memory options ask for, the rest at ``MemoryConfig``'s
    defaults: it checks the options before the model loads. Options that would do nothing
    together are refused first (:func:`check_memory_options`). A session of a loaded model
    takes ``engine.memory(**memory_overrides(args))``, which fills the rest from what the
    checkpoint recommends.

    Building it checks the codec and policy names against their registries, which imports
    torch: check paths and the cheap options before calling this.

    Raises:
        ConfigError: a value ``MemoryConfig`` rejects, or options without effect.
    """
    check_memory_options(args)
    return MemoryConfig(**memory_overrides(args))


def check_memory_options(args: argparse.Namespace) -> None:
    """Refuse memory options that cannot act in the combination given, in one line that
    says why and what to do. Imports nothing.

    Ranges are ``MemoryConfig``'s to check; this is about combinations. A codec option
    counts as given when it is not ``None`` (commands that offer it default it to ``None``).

    Raises:
        ConfigError: naming the option that would do nothing.
    """
    prune = getattr(args, "prune", None)
    if prune is not None and prune > 1:
        raise ConfigError(
            f"--prune {prune:g} prunes nothing (a cosine similarity is at most 1); give a threshold "
            "up to 1, e.g. 0.95, or leave --prune out"
        )
    if getattr(args, "host_codec", None) is not None and getattr(args, "host_bytes", None) == 0:
        raise ConfigError(
            "--host-codec does nothing with --host-bytes 0 (no block is kept in host RAM); leave one out"
        )
    if getattr(args, "disk_codec", None) is not None and getattr(args, "disk_dir", None) is None:
        raise ConfigError(
            "--disk-codec does nothing without --disk-dir (no block is kept on disk); add --disk-dir DIR "
            "or leave it out"
        )


def note_memory_options(args: argparse.Namespace) -> None:
    """Say on stderr, in one line each, what a legal but surprising memory option means
    (``--window 0``). Called once the command has passed its checks, so that an error
    stays the only line it prints."""
    if getattr(args, "window", None) == 0:
        print(
            "note: --window 0 encodes each chunk over the system prompt alone, without the frames before it",
            file=sys.stderr,
        )


# ------------------------------------------------------------------ paths
# Checked here, before torch is imported, so that a mistyped path fails at once; the
# modules that open them check again for callers of the Python API.


def check_input_file(path: str | os.PathLike) -> None:
    """Raises ``VideoOpenError`` unless ``path`` is a file that can be opened for reading."""
    if not os.path.exists(path):
        raise VideoOpenError(f"cannot open '{path}': no such file; check the path")
    if os.path.isdir(path):
        raise VideoOpenError(
            f"cannot open '{path}': it is a directory; pass the path of a video file inside it"
        )
    if not os.access(path, os.R_OK):
        raise VideoOpenError(f"cannot open '{path}': permission denied; check the file's permissions")


def check_existing_directory(path: str | os.PathLike, flag: str, expected: str) -> None:
    """Raises ``ConfigError`` unless the directory ``flag`` names exists; the message asks
    for ``expected`` (e.g. "the directory a session was saved in")."""
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"{flag} {path} {what}; give {expected}")


def check_output_directory(path: str | os.PathLike, flag: str) -> None:
    """Raises ``ConfigError`` when the directory ``flag`` names to write into is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file; give a directory (new, or one to overwrite)")


def check_new_directory(path: str | os.PathLike, flag: str, resume_flag: str) -> None:
    """Raises ``ConfigError`` unless the directory ``flag`` names is empty or can be created:
    a session is written there and must not mix with other files (``resume_flag`` reopens
    one that is there already)."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file; give an empty or new directory")
    if os.listdir(path):
        raise ConfigError(
            f"{flag} {path} is not empty; if it already holds a session, reopen it with "
            f"{resume_flag} {path}, else give an empty or new directory"
        )


# ------------------------------------------------------------ answers and output


def _answer_length(text: str) -> int:
    """``--max-new-tokens``'s value: 1 to ``MAX_NEW_TOKENS_LIMIT``."""
    value = positive_int(text)
    if value > MAX_NEW_TOKENS_LIMIT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NEW_TOKENS_LIMIT} tokens, got {value}")
    return value


def add_max_new_tokens_option(parser: argparse.ArgumentParser, default: int = DEFAULT_MAX_NEW_TOKENS) -> None:
    """``--max-new-tokens``: the longest answer."""
    parser.add_argument(
        "--max-new-tokens",
        type=_answer_length,
        default=default,
        metavar="N",
        help=f"longest answer in tokens (default: {default})",
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``: a progress bar on stderr, by default when it is a terminal."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on when stderr is a terminal)",
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
    ``error: ...`` line on stderr); 130 interrupted (Ctrl-C, ``interrupted`` on stderr);
    141 the output pipe was closed (like a shell tool killed by SIGPIPE).
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
    except BrokenPipeError:
        # the reader went away (`streamvlm ... | head`): stop quietly, as shell tools do;
        # stdout points at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
