"""Command line: ``streamvlm watch VIDEO`` and ``streamvlm info``.

Exit codes: 0 ok; 2 bad input or configuration (any ``StreamVLMError`` and argument
errors, printed as one ``error: ...`` line on stderr); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .cli_options import add_run_options, parse_lengths
from .config import POSITION_MODES, QUERY_CONTEXTS, MemoryConfig
from .errors import ConfigError, EmptyVideoError, InvalidQuestionError, StreamVLMError
from .runtime.questions import validate_question

# The model `streamvlm watch` uses when none is given: the ~2M-parameter model the
# project trained on its synthetic world (streamvlm/models/checkpoints/, docs/training.md). It answers
# questions about videos of that world (assets/shapes.mp4); on other videos its answers
# are words of that world, not descriptions.
DEFAULT_MODEL = "streamvlm-tiny-synth"  # models.bundled.TINY_SYNTH; that package imports torch
DEFAULT_FPS = 1.0
DEFAULT_MAX_NEW_TOKENS = 64
QUIT_WORDS = {"quit", "exit", ":q"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class TimedQuestion:
    """A question to ask once the stream has passed ``at`` seconds (``None``: at the end)."""

    question: str
    at: float | None


def parse_ask_at(spec: str, max_chars: int) -> TimedQuestion:
    """Parse ``SECONDS:QUESTION`` (e.g. ``12.5:what just happened?``)."""
    head, sep, question = spec.partition(":")
    try:
        at = float(head)
    except ValueError:
        at = math.nan
    if not sep or not math.isfinite(at) or at < 0:
        raise ConfigError(
            f"--ask-at takes SECONDS:QUESTION with SECONDS >= 0, e.g. '12.5:what happened?'; got {spec!r}"
        )
    return TimedQuestion(validate_question(question, max_chars), at)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamvlm",
        description="Stream a video into a vision-language model and ask about what it has seen.",
    )
    parser.add_argument("--version", action="version", version=f"streamvlm {_streamvlm_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    w = sub.add_parser(
        "watch",
        help="stream a video file into a model, then answer questions",
        description=(
            "Stream VIDEO through a session, frame by frame, and answer questions about it. "
            "--ask-at questions are asked when the stream reaches their time, --ask questions "
            "at the end; with neither, questions are read from stdin after the stream."
        ),
    )
    w.add_argument(
        "video",
        metavar="VIDEO",
        nargs="?",
        help="video file (anything FFmpeg/PyAV decodes); optional with --resume",
    )
    w.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name, path or hub id (default: {DEFAULT_MODEL})"
    )
    w.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frames per second of stream time fed to the model (default: {DEFAULT_FPS:g})",
    )
    w.add_argument(
        "--ask", action="append", default=[], metavar="Q", help="question to ask at the end (repeatable)"
    )
    w.add_argument(
        "--ask-at",
        action="append",
        default=[],
        metavar="SECONDS:Q",
        help="question to ask once the stream reaches SECONDS (repeatable)",
    )
    w.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout and nothing else (no interactive prompt)",
    )
    w.add_argument(
        "--window",
        type=int,
        default=MemoryConfig.window,
        metavar="N",
        help=f"frames of recent context each chunk attends to while encoding (default: {MemoryConfig.window})",
    )
    w.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="N",
        help="answer over the N blocks retrieved for each question (+ the answer window); default: every block",
    )
    w.add_argument(
        "--answer-window",
        type=int,
        default=None,
        metavar="N",
        help="with --top-k: frames of the newest video every answer sees besides the retrieved "
        "blocks, e.g. 2 (docs/retrieval.md); default: the --window",
    )
    w.add_argument(
        "--query-context",
        choices=QUERY_CONTEXTS,
        default=None,
        help="with --top-k: what retrieval reads the question over, the --window or the sink alone "
        f"(docs/retrieval.md; default: {MemoryConfig.query_context})",
    )
    w.add_argument(
        "--positions",
        choices=POSITION_MODES,
        default=None,
        help="with --top-k: keep retrieved blocks at their stream positions, or re-rotate them "
        f"next to the question (docs/retrieval.md; default: {MemoryConfig.position_mode})",
    )
    w.add_argument(
        "--prune",
        type=float,
        default=None,
        metavar="TAU",
        help="drop visual tokens at least TAU alike (cosine) to the last kept one at their place, "
        "e.g. 0.95 (docs/pruning.md); default: keep every token",
    )
    w.add_argument(
        "--host-codec",
        default=MemoryConfig.host_codec,
        metavar="CODEC",
        help=f"how blocks are stored in host RAM, e.g. vidkv or kivi2 (docs/quantization.md; default: {MemoryConfig.host_codec})",
    )
    w.add_argument(
        "--disk-codec",
        default=MemoryConfig.disk_codec,
        metavar="CODEC",
        help=f"how blocks are stored on disk (default: {MemoryConfig.disk_codec})",
    )
    w.add_argument(
        "--disk-dir",
        metavar="DIR",
        help="keep the session on disk in DIR (an empty or new directory), so it can be resumed",
    )
    w.add_argument(
        "--resume",
        metavar="DIR",
        help="reopen the session saved in DIR; VIDEO, if given, is streamed after what it has seen",
    )
    w.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest answer in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    w.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)",
    )
    w.add_argument(
        "--dtype",
        default=None,
        help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)",
    )
    w.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on when stderr is a terminal)",
    )
    w.set_defaults(func=cmd_watch)

    i = sub.add_parser(
        "info",
        help="versions, video decoders, faiss and devices",
        description="Show versions, which video decoders and faiss import, and the devices torch sees.",
    )
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="benchmarks against a baseline in the same run")
    bench = b.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench.required = True
    _add_bench_stream(bench)
    _add_bench_quant(bench)
    from .bench.serve import add_bench_serve_parser

    add_bench_serve_parser(bench)

    from .synth.cli import add_synth_parser

    add_synth_parser(sub)
    _add_train_tiny(sub)
    _add_serve(sub)
    from .client.cli import add_stream_parser

    add_stream_parser(sub)
    from .demos.cli import add_demo_parser

    add_demo_parser(sub)
    from .eval.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _add_train_tiny(sub) -> None:
    from .train.config import TrainConfig

    d = TrainConfig()
    t = sub.add_parser(
        "train-tiny",
        help="train the tiny Qwen2.5-VL-architecture model on the synthetic world",
        description=(
            "Train a ~2M-parameter Qwen2.5-VL (real transformers class) on clips of the synthetic "
            "world laid out as streamvlm streams them, log loss and held-out accuracy, and save a "
            "checkpoint that StreamVLM.from_pretrained(OUT) loads."
        ),
    )
    t.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument(
        "--vision-steps",
        type=int,
        default=d.vision_steps,
        help=f"steps pre-training the vision tower alone on objects, before the questions (default: {d.vision_steps})",
    )
    t.add_argument(
        "--minutes", type=float, default=d.time_budget_s / 60, help="stop and save after this long"
    )
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument(
        "--init",
        metavar="DIR",
        help="continue from this checkpoint (a train-tiny output) instead of a fresh model",
    )
    t.add_argument(
        "--curriculum",
        choices=("base", "long", "finetune", "late", "count"),
        default=d.curriculum,
        help="base: from scratch, 4-16 frames; long: continue (with --init) on 4-24 frames, "
        "up to 5 objects, time jumps between blocks; finetune: continue on the base task's "
        "last stage; late: the same, half the clips starting up to an hour into the stream; "
        "count: late with counting questions three times as often "
        f"(default: {d.curriculum})",
    )
    t.add_argument(
        "--retrieval-loss-weight",
        type=float,
        default=d.retrieval_loss_weight,
        help="weight of the auxiliary loss that trains question queries and block keys to "
        f"retrieve the block a question is about (docs/training.md; default: {d.retrieval_loss_weight:g}, off)",
    )
    t.add_argument(
        "--retrieval-query-context",
        choices=QUERY_CONTEXTS,
        default=d.retrieval_query_context,
        help="what the retrieval loss reads the question over: the sink alone (as MemoryConfig("
        f"query_context='sink') retrieves) or the whole clip (default: {d.retrieval_query_context})",
    )
    t.add_argument("--eval-every", type=int, default=d.eval_every)
    t.add_argument(
        "--eval-samples", type=int, default=d.eval_samples, help="held-out clips scored at each evaluation"
    )
    t.add_argument(
        "--save-dtype",
        choices=("float32", "float16"),
        default=d.save_dtype,
        help="dtype of the saved weights (float16 halves the checkpoint; training runs in float32)",
    )
    t.set_defaults(func=cmd_train_tiny)


def cmd_train_tiny(args: argparse.Namespace) -> int:
    from .train.config import TrainConfig
    from .train.loop import train
    from .train.synth_task import CURRICULA, OBJECT_CLASSES, VOCABULARY, synth_sample, vision_sample

    if min(args.steps, args.batch_size, args.eval_every, args.eval_samples) < 1 or not (
        args.lr > 0 and args.minutes > 0
    ):
        raise ConfigError(
            "--steps, --batch-size, --lr, --minutes, --eval-every and --eval-samples must be positive"
        )
    if args.vision_steps < 0:
        raise ConfigError(f"--vision-steps must be 0 or more, got {args.vision_steps}")
    if not (math.isfinite(args.retrieval_loss_weight) and args.retrieval_loss_weight >= 0):
        raise ConfigError(f"--retrieval-loss-weight must be 0 or more, got {args.retrieval_loss_weight}")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        vision_steps=args.vision_steps,
        seed=args.seed,
        time_budget_s=60 * args.minutes,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        save_dtype=args.save_dtype,
        init=args.init,
        curriculum=args.curriculum,
        retrieval_loss_weight=args.retrieval_loss_weight,
        retrieval_query_context=args.retrieval_query_context,
    )
    curriculum = CURRICULA[args.curriculum]
    result = train(
        lambda rng, progress: synth_sample(rng, progress, curriculum),
        VOCABULARY,
        args.out,
        config,
        log=lambda line: print(line, flush=True),
        object_classes=OBJECT_CLASSES,
        make_view=vision_sample,
    )
    print(
        f"saved {args.out}: held-out accuracy {result['held_out_accuracy']:.3f} after "
        f"{result['vision_steps_run']} vision steps and {result['steps_run']} steps"
    )
    return 0


def _add_bench_stream(bench) -> None:
    from .bench.stream import StreamBenchConfig

    d = StreamBenchConfig()
    s = bench.add_parser(
        "stream",
        help="cost per frame, time to first token and memory against stream length",
        description=(
            "Stream a synthetic video of growing length through one session (retrieval on, "
            "tiers with small budgets) and, at each checkpoint length, ask a question; in the same "
            "run, answer it with plain transformers generate() over every frame so far until that "
            "passes a time or memory cap. Prints a table (or --json) and the ratios the targets use."
        ),
    )
    s.add_argument("--model", default=d.model)
    s.add_argument(
        "--lengths",
        default=",".join(map(str, d.lengths)),
        help=f"checkpoint lengths in sampled frames (default: {','.join(map(str, d.lengths))})",
    )
    s.add_argument("--fps", type=float, default=d.fps, help="stream time between frames is 1/fps")
    s.add_argument("--size", type=int, default=d.size, help="frame side in pixels")
    s.add_argument("--window", type=int, default=d.window)
    s.add_argument("--top-k", type=int, default=d.top_k)
    s.add_argument("--device-bytes", type=int, default=d.device_bytes)
    s.add_argument("--host-bytes", type=int, default=d.host_bytes)
    s.add_argument("--question", default=d.question)
    s.add_argument("--baseline-cap-s", type=float, default=d.baseline_cap_s)
    add_run_options(s)
    s.set_defaults(func=cmd_bench_stream)


def cmd_bench_stream(args: argparse.Namespace) -> int:
    from .bench.stream import HEADER, StreamBenchConfig, plot, run_stream_bench

    lengths = parse_lengths(args.lengths, 2, "100,300,1000")
    config = StreamBenchConfig(
        model=args.model,
        lengths=lengths,
        fps=args.fps,
        size=args.size,
        window=args.window,
        top_k=args.top_k,
        device_bytes=args.device_bytes,
        host_bytes=args.host_bytes,
        question=validate_question(args.question, MemoryConfig.max_question_chars),
        baseline_cap_s=args.baseline_cap_s,
        device=args.device,
        dtype=args.dtype,
    )
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    log(HEADER)
    result = run_stream_bench(config, log=log)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"baseline: {result.baseline_stopped or 'ran at every length'}")
    for name, value in result.ratios().items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


def _add_bench_quant(bench) -> None:
    from .bench.quant import QuantBenchConfig

    d = QuantBenchConfig()
    q = bench.add_parser(
        "quant",
        help="every KV codec on the same tensors: bits, errors, throughput; needle accuracy per storage",
        description=(
            "For each KV set (synthetic with outlier channels, and the KV of tiny models over a "
            "synthetic-world video with their real queries) and each codec: stored bits per element "
            "with metadata, K/V relative error, attention-output error and attention-weight TV "
            "distance, encode/decode GB/s next to a plain copy. Then needle accuracy of the trained "
            "model with every codec and with pruning, against lossless storage, in the same run."
        ),
    )
    q.add_argument("--codecs", default=",".join(d.codecs), help=f"(default: {','.join(d.codecs)})")
    q.add_argument("--kv-sets", default=",".join(d.kv_sets), help=f"(default: {','.join(d.kv_sets)})")
    q.add_argument(
        "--frames", type=int, default=d.frames, help="video frames streamed to capture a model's KV"
    )
    q.add_argument("--repeats", type=int, default=d.repeats, help="timing repeats (median)")
    q.add_argument(
        "--needle-lengths",
        default=",".join(map(str, d.needle_lengths)),
        help="stream lengths of the needle part; 'none' skips it (default: %(default)s)",
    )
    q.add_argument(
        "--clips",
        type=int,
        default=d.clip_samples,
        help="held-out clips answered per storage; 0 skips (default: %(default)s)",
    )
    q.add_argument("--needle-streams", type=int, default=d.needle_streams)
    q.add_argument("--needle-min-questions", type=int, default=d.needle_min_questions)
    q.add_argument("--seed", type=int, default=d.seed)
    add_run_options(q)
    q.set_defaults(func=cmd_bench_quant)


def cmd_bench_quant(args: argparse.Namespace) -> int:
    from .bench.quant import QuantBenchConfig, plot, run_quant_bench
    from .eval.needle import MIN_LENGTH
    from .quant import CODEC_NAMES

    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    unknown = [c for c in codecs if c not in CODEC_NAMES]
    if not codecs or unknown:
        raise ConfigError(f"--codecs takes names among {', '.join(CODEC_NAMES)}; got {args.codecs!r}")
    kv_sets = tuple(k.strip() for k in args.kv_sets.split(",") if k.strip())
    if not kv_sets:
        raise ConfigError("--kv-sets needs at least one of: synthetic, a model name or path")
    needle = () if args.needle_lengths.strip().lower() in ("none", "") else None
    if needle is None:
        needle = parse_lengths(args.needle_lengths, MIN_LENGTH, "256", "--needle-lengths")
    if min(args.frames, args.repeats, args.needle_streams) < 1 or args.needle_min_questions < 0:
        raise ConfigError(
            "--frames, --repeats and --needle-streams must be >= 1, --needle-min-questions >= 0"
        )
    config = QuantBenchConfig(
        codecs=codecs,
        kv_sets=kv_sets,
        frames=args.frames,
        repeats=args.repeats,
        needle_lengths=needle,
        needle_streams=args.needle_streams,
        needle_min_questions=args.needle_min_questions,
        clip_samples=args.clips,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    result = run_quant_bench(config, log=log)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return 0


# --------------------------------------------------------------------------- watch


def _plain(obj: Any) -> Any:
    """A JSON-ready copy of a dataclass / object with attributes / mapping."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _sampled_frames(source, fps: float) -> Iterator:
    from .ingest import Sampler

    return iter(Sampler(fps=fps).sample(source))


class _Progress:
    """tqdm bar on stderr: frames fed, stream time, real-time factor, bytes held."""

    def __init__(self, enabled: bool, total: int | None):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, unit="frame", file=sys.stderr, disable=not enabled, dynamic_ncols=True, desc="watch"
        )
        self._last = 0.0

    def update(self, session, stream_t: float, wall_s: float, n: int = 1, force: bool = False) -> None:
        self.bar.update(n)
        now = time.monotonic()
        if self.bar.disable or (not force and now - self._last < 0.25):
            return
        self._last = now
        held = sum(session.stats().bytes_per_tier.values())
        rtf = stream_t / wall_s if wall_s > 0 else 0.0
        self.bar.set_postfix_str(f"t={stream_t:.1f}s rtf={rtf:.2f}x held={_human_bytes(held)}", refresh=True)

    def write(self, text: str, file: TextIO) -> None:
        from tqdm import tqdm

        if self.bar.disable:
            print(text, file=file, flush=True)
        else:
            tqdm.write(text, file=file)

    def close(self) -> None:
        self.bar.close()


def _printable(text: str) -> str:
    """Escape control characters (a random-weight model emits any byte) so they cannot
    drive the terminal; newlines and tabs stay."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else c.encode("unicode_escape").decode()
        for c in text
    )


def _format_answer(answer, at: float | None = None) -> str:
    t = answer.asked_at if at is None else at
    head = f"[{t:.1f}s] "
    return f"{head}Q: {answer.question}\n{' ' * len(head)}A: {_printable(answer.text.strip())}"


def _answer_record(answer, kind: str, requested_at: float | None) -> dict:
    record = _plain(answer.to_dict())
    record["kind"] = kind
    record["requested_at"] = requested_at
    return record


def cmd_watch(args: argparse.Namespace) -> int:
    # Everything is checked before streaming starts, cheapest first: options and
    # questions, then the video (opened and probed), then the model.
    memory = MemoryConfig(
        window=args.window,
        top_k=args.top_k,
        answer_window=args.answer_window,
        query_context=args.query_context or MemoryConfig.query_context,
        position_mode=args.positions or MemoryConfig.position_mode,
        disk_dir=args.disk_dir,
        prune_threshold=args.prune,
        host_codec=args.host_codec,
        disk_codec=args.disk_codec,
    )
    if args.video is None and args.resume is None:
        raise ConfigError("give a VIDEO to watch, or --resume DIR to ask about a saved session")
    if args.resume is not None and args.disk_dir is not None:
        raise ConfigError("--resume DIR continues the session in DIR; leave out --disk-dir")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    at_end = [TimedQuestion(validate_question(q, memory.max_question_chars), None) for q in args.ask]
    timed = sorted((parse_ask_at(s, memory.max_question_chars) for s in args.ask_at), key=lambda q: q.at)
    interactive = not at_end and not timed and not args.json

    from .ingest import FileSource

    video = Path(args.video) if args.video is not None else None
    source = FileSource(video) if video is not None else None
    info = source.info if source is not None else None  # probed: a bad file has failed already

    from . import Session, StreamVLM
    from .runtime.decode import SamplingParams

    SamplingParams(max_new_tokens=args.max_new_tokens)  # raises ConfigError when out of range
    kwargs = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    engine = StreamVLM.from_pretrained(args.model, **kwargs)
    if args.resume is not None:
        overrides = {"window": args.window} | {
            name: value
            for name, value in (
                ("top_k", args.top_k),
                ("answer_window", args.answer_window),
                ("query_context", args.query_context),
                ("position_mode", args.positions),
            )
            if value is not None
        }
        session = Session.resume(args.resume, engine, **overrides)
    else:
        session = engine.new_session(memory=memory)
    # a resumed session's clock has moved on: new frames come after what it has seen
    offset = session.stream_time + 1.0 / args.fps if session.frames_seen else 0.0

    duration = getattr(info, "duration", None)
    total = max(1, math.ceil(duration * args.fps)) if duration else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = _Progress(show, total)
    out = sys.stdout
    records: list[dict] = []

    def ask(q: TimedQuestion, kind: str) -> None:
        answer = session.ask(q.question, max_new_tokens=args.max_new_tokens)
        records.append(_answer_record(answer, kind, q.at))
        if not args.json:
            progress.write(_format_answer(answer), out)

    pending = list(timed)
    frames = 0
    stream_t = 0.0
    start = time.perf_counter()
    try:
        for frame in _sampled_frames(source, args.fps) if source is not None else ():
            # An --ask-at question is asked before the first frame later than its time.
            while pending and frame.t > pending[0].at:
                ask(pending.pop(0), "ask-at")
            session.add_frame(frame.rgb, t=frame.t + offset)
            frames += 1
            stream_t = frame.t
            progress.update(session, stream_t, time.perf_counter() - start)
        session.flush()
        stream_wall = time.perf_counter() - start
        progress.update(session, stream_t, stream_wall, n=0, force=True)
    finally:
        progress.close()
    if frames == 0 and source is not None:
        raise EmptyVideoError(f"{video}: no frame was decoded at --fps {args.fps:g}")
    skipped = getattr(source, "decode_errors", 0) or 0
    if skipped:
        print(
            f"warning: {skipped} packet(s) of {video} could not be decoded and were skipped", file=sys.stderr
        )
    if not args.json:
        stats = session.stats()
        held = sum(stats.bytes_per_tier.values())
        rtf = stream_t / stream_wall if stream_wall > 0 else 0.0
        print(
            f"watched {frames} frames, {stream_t:.1f}s of stream in {stream_wall:.1f}s "
            f"({rtf:.2f}x real time); {stats.blocks} blocks, {_human_bytes(held)} held",
            file=sys.stderr,
            flush=True,
        )
    for q in pending:  # times past the end of the video: asked once the whole video is in
        ask(q, "ask-at")
    for q in at_end:
        ask(q, "ask")

    if interactive:
        _interactive(session, args.max_new_tokens, memory.max_question_chars, stream_t)
    if session.memory.disk_dir is not None:
        session.close()  # checkpoint: the directory can be resumed with --resume

    if args.json:
        stats = session.stats()
        backend = getattr(engine, "backend", None)
        doc = {
            "model": args.model,
            "device": str(getattr(backend, "device", args.device)),
            "dtype": str(getattr(backend, "dtype", args.dtype)).removeprefix("torch."),
            "video": {"path": str(video), **_plain(info)} if video is not None else None,
            "session_dir": session.memory.disk_dir,
            "decoder": {
                "backend": getattr(info, "backend", None),
                "codec": getattr(info, "codec", None),
                "decode_errors": skipped,
            },
            "sampling": {"fps": args.fps, "frames_fed": frames},
            "stream_s": stream_t,
            "wall_s": round(stream_wall, 4),
            "realtime_factor": round(stream_t / stream_wall, 4) if stream_wall > 0 else None,
            "answers": records,
            "stats": _plain(stats.to_dict()),
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    return 0


def _interactive(session, max_new_tokens: int, max_chars: int, stream_t: float) -> None:
    """Read questions from stdin until EOF, an empty line or `quit`; stream each answer.

    On a terminal it prompts (with line editing where ``readline`` exists); from a pipe
    it echoes each question before its answer so the output reads on its own.
    """
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (gives input() line editing and history)
        except ImportError:
            pass
        print("Ask about the video (an empty line, 'quit' or Ctrl-D ends).", file=sys.stderr)
    head = f"[{stream_t:.1f}s] "
    while True:
        if tty:
            try:
                line = input("? ")
            except EOFError:
                print()
                return
        else:
            line = sys.stdin.readline()
            if not line:
                return
        question = line.strip()
        if not question or question.lower() in QUIT_WORDS:
            return
        try:
            question = validate_question(question, max_chars)
        except InvalidQuestionError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            continue
        if tty:
            print(f"{head}A: ", end="", flush=True)
        else:
            print(f"{head}Q: {question}\n{' ' * len(head)}A: ", end="", flush=True)
        for delta in session.ask_stream(question, max_new_tokens=max_new_tokens):
            print(_printable(delta), end="", flush=True)
        print(flush=True)


# ---------------------------------------------------------------------------- info


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _try_import(module: str) -> tuple[Any, str | None]:
    import importlib

    try:
        return importlib.import_module(module), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def _streamvlm_version() -> str:
    return _version("streamvlm") or "unknown (not installed)"


def collect_info() -> dict:
    info: dict[str, Any] = {
        "versions": {
            "streamvlm": _streamvlm_version(),
            "python": f"{platform.python_version()} ({platform.python_implementation()}, {platform.system()} {platform.machine()})",
        },
        "decoders": {},
        "faiss": {},
        "devices": [],
    }
    versions = info["versions"]
    torch, err = _try_import("torch")
    versions["torch"] = torch.__version__ if torch else f"not importable ({err})"
    for name in ("transformers", "numpy"):
        mod, err = _try_import(name)
        versions[name] = getattr(mod, "__version__", "?") if mod else f"not importable ({err})"

    av, err = _try_import("av")
    versions["av"] = getattr(av, "__version__", "?") if av else _version("av") or "not installed"
    ffmpeg = None
    if av is not None:
        try:
            ffmpeg = ".".join(str(x) for x in av.library_versions["libavcodec"])
        except Exception:
            ffmpeg = None
    info["decoders"]["pyav"] = {"ok": av is not None, "error": err, "libavcodec": ffmpeg}

    decord, err = _try_import("decord")
    versions["decord"] = getattr(decord, "__version__", None) or _version("decord") or "not installed"
    info["decoders"]["decord"] = {"ok": decord is not None, "error": err}

    faiss, err = _try_import("faiss")
    versions["faiss"] = (
        getattr(faiss, "__version__", None)
        or _version("faiss-cpu")
        or _version("faiss-gpu-cu12")
        or "not installed"
    )
    gpus = 0
    if faiss is not None and hasattr(faiss, "get_num_gpus"):
        try:
            gpus = int(faiss.get_num_gpus())
        except Exception:
            gpus = 0
    info["faiss"] = {"ok": faiss is not None, "error": err, "gpus": gpus}

    import os

    info["devices"].append(
        {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": os.cpu_count()}
    )
    if torch is not None:
        try:
            if torch.cuda.is_available():
                for d in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(d)
                    info["devices"].append(
                        {
                            "device": f"cuda:{d}",
                            "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                        }
                    )
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                info["devices"].append({"device": "mps", "name": "Apple Metal"})
        except Exception as e:
            info["devices"].append({"device": "cuda", "error": str(e).splitlines()[0]})
        info["cuda_available"] = bool(torch.cuda.is_available())
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def status(d: dict) -> str:
        return "ok" if d["ok"] else f"unavailable ({d['error']})"

    rows: list[tuple[str, str]] = list(info["versions"].items()) + [("", "")]
    for name, d in info["decoders"].items():
        extra = f" (libavcodec {d['libavcodec']})" if d.get("libavcodec") else ""
        rows.append((f"decoder {name}", status(d) + extra))
    f = info["faiss"]
    rows.append(("faiss", status(f) + (f", {f['gpus']} GPU(s) visible to faiss" if f["ok"] else "")))
    rows.append(("", ""))
    for d in info["devices"]:
        if "error" in d:
            rows.append((f"device {d['device']}", f"error: {d['error']}"))
        elif "threads" in d:
            rows.append((f"device {d['device']}", f"{d['name']} ({d['threads']} threads)"))
        elif "memory_gib" in d:
            rows.append((f"device {d['device']}", f"{d['name']} ({d['memory_gib']} GiB)"))
        else:
            rows.append((f"device {d['device']}", d["name"]))
    if not info.get("cuda_available", False):
        rows.append(("device cuda", "not available"))
    width = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        print(f"{k:<{width}}{v}".rstrip())
    return 0


# --------------------------------------------------------------------------- serve


def _add_serve(sub) -> None:
    # servers.settings is plain Python (no FastAPI, no torch): the parser stays light
    from .servers.settings import API_KEY_ENV, ServerSettings

    d = ServerSettings()
    s = sub.add_parser(
        "serve",
        help="serve a model over HTTP and websockets (docs/protocol.md)",
        description=(
            "Load a model and serve it: REST for sessions, health and Prometheus metrics, and a "
            "websocket per session that takes frames and questions and streams answers "
            f"(docs/protocol.md). Set {API_KEY_ENV} to require a key for creating sessions and "
            "reading metrics; every session also has its own token. The server reads no file a "
            "client names unless --allow-dir is given, and then only regular files inside those "
            "directories."
        ),
    )
    s.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name, path or hub id (default: {DEFAULT_MODEL})"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)"
    )
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    s.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: per device)")
    s.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        metavar="N",
        help=f"sessions open at once (default: {d.max_sessions})",
    )
    s.add_argument(
        "--max-fps",
        type=float,
        default=None,
        metavar="F",
        help=f"frames per second each session accepts; more are dropped and counted (default: {d.max_fps:g})",
    )
    s.add_argument(
        "--max-frame-bytes",
        type=int,
        default=None,
        metavar="B",
        help=f"largest encoded frame accepted (default: {d.max_frame_bytes})",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"close sessions idle this long (default: {d.idle_timeout_s:g})",
    )
    s.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        metavar="DIR",
        dest="allow_dirs",
        help=(
            "let chat completions name a video by file:// URL or absolute path when its real path "
            "(symlinks followed) is a regular file inside DIR; repeatable (default: none, the "
            "server reads no file a client names)"
        ),
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: info)",
    )
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .servers.settings import API_KEY_ENV, ServerSettings

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    settings = ServerSettings.from_env()
    wanted = {
        "max_sessions": args.max_sessions,
        "max_fps": args.max_fps,
        "max_frame_bytes": args.max_frame_bytes,
        "idle_timeout_s": args.idle_timeout,
        "allowed_dirs": tuple(args.allow_dirs) or None,  # resolved and checked by ServerSettings
    }
    overrides = {k: v for k, v in wanted.items() if v is not None}
    if "max_frame_bytes" in overrides:  # keep the socket limit above the frame limit
        overrides["max_message_bytes"] = max(
            settings.max_message_bytes, overrides["max_frame_bytes"] + (64 << 10)
        )
    settings = replace(settings, **overrides)
    try:
        from .servers.run import bind_socket, serve
    except ImportError as e:
        raise ConfigError(
            f"streamvlm serve needs the server extra ({e.name} is missing): pip install 'streamvlm[server]'"
        ) from None
    sock = bind_socket(args.host, args.port)  # ConfigError when in use: before the model loads

    from . import StreamVLM

    kwargs = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    engine = StreamVLM.from_pretrained(args.model, **kwargs)
    host, port = sock.getsockname()[:2]
    if settings.api_key is None and host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"warning: listening on {host} with no {API_KEY_ENV}: anyone who can reach it can open sessions",
            file=sys.stderr,
        )
    shown = f"[{host}]" if ":" in host else host
    print(f"streamvlm: serving {engine.model_name} on http://{shown}:{port}", file=sys.stderr, flush=True)
    for directory in settings.allowed_dirs:
        print(f"streamvlm: clients may read videos under {directory}", file=sys.stderr, flush=True)
    serve(engine, settings, args.host, port, args.log_level, sock=sock)
    return 0


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StreamVLMError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
