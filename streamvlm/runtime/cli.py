"""``streamvlm watch VIDEO``: stream a video file through a session, then answer questions.

``--ask-at`` questions are asked when the stream reaches their time, ``--ask`` questions
at the end; with neither (and no ``--json``), questions are read from stdin after the
stream. The parser is built at CLI start-up: this module imports torch and the video
decoders only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli_options import (
    QUIT_WORDS,
    add_json_option,
    add_max_new_tokens_option,
    add_memory_options,
    add_model_options,
    add_progress_option,
    check_existing_directory,
    check_input_file,
    check_model_options,
    check_new_directory,
    fixed_memory_flags,
    load_model,
    memory_config,
    memory_overrides,
    note_memory_options,
)
from ..config import MemoryConfig
from ..errors import ConfigError, EmptyVideoError, InvalidQuestionError
from ..models.catalog import model_card
from .cli_output import Progress, answer_record, format_answer, human_bytes, plain, printable
from .questions import validate_question

DEFAULT_FPS = 1.0
# The memory options of watch (argparse dests). A resumed session takes those that do not
# change what it stores; the others (codecs, pruning) are refused with --resume.
MEMORY_OPTIONS = ("window", "top_k", "answer_window", "answer_tokens", "max_position_span", "query_context")
MEMORY_OPTIONS += ("positions", "device_bytes", "host_bytes", "prune", "host_codec", "disk_codec", "disk_dir")


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


def add_watch_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``watch`` to the CLI's subcommands; returns its parser."""
    w = subparsers.add_parser(
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
    add_model_options(w)
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
    add_json_option(w, note=" (no interactive prompt)")
    # not given (None), an option takes what the model recommends, else MemoryConfig's value,
    # and a resumed session keeps its own
    add_memory_options(w, *MEMORY_OPTIONS)
    w.add_argument(
        "--resume",
        metavar="DIR",
        help="reopen the session saved in DIR; VIDEO, if given, is streamed after what it has seen",
    )
    add_max_new_tokens_option(w)
    add_progress_option(w)
    w.set_defaults(func=cmd_watch)
    return w


def cmd_watch(args: argparse.Namespace) -> int:
    """Run ``streamvlm watch``; raises ``StreamVLMError`` on bad input."""
    # Everything is checked before streaming starts, cheapest first, so that a mistake fails
    # in well under a second: options and questions, then paths and the device (no torch
    # yet), then the memory options (their names import torch), the video (opened and
    # probed) and the sampling limits; the model loads last.
    if args.video is None and args.resume is None:
        raise ConfigError("give a VIDEO to watch, or --resume DIR to ask about a saved session")
    if args.resume is not None:
        _check_resumable(args)
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    max_chars = MemoryConfig.max_question_chars
    at_end = [TimedQuestion(validate_question(q, max_chars), None) for q in args.ask]
    timed = sorted((parse_ask_at(s, max_chars) for s in args.ask_at), key=lambda q: q.at)
    interactive = not at_end and not timed and not args.json
    video = Path(args.video) if args.video is not None else None
    if video is not None:
        check_input_file(video)
    if args.resume is not None:
        check_existing_directory(args.resume, "--resume", "the directory a session was saved in")
        if not os.listdir(args.resume):  # surely no session; other directories are read once the model is up
            raise ConfigError(f"--resume {args.resume} is empty; give the directory a session was saved in")
    if args.disk_dir is not None:
        check_new_directory(args.disk_dir, "--disk-dir", resume_flag="--resume")
    check_model_options(args)
    memory = memory_config(args)  # checked before the model loads; the session's comes from the engine

    from ..ingest import FileSource

    source = FileSource(video) if video is not None else None
    info = source.info if source is not None else None  # probed: a bad file has failed already

    engine = load_model(args)
    session = _open_session(args, engine)
    card = model_card(args.model)
    if not args.json:  # the JSON document carries the card
        print(card.line(), file=sys.stderr, flush=True)
    note_memory_options(args)
    # a resumed session's clock has moved on: new frames come after what it has seen
    offset = session.stream_time + 1.0 / args.fps if session.state.frames_seen else 0.0

    duration = getattr(info, "duration", None)
    total = max(1, math.ceil(duration * args.fps)) if duration else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(show, total)
    out = sys.stdout
    records: list[dict] = []

    def ask(q: TimedQuestion, kind: str) -> None:
        answer = session.ask(q.question, max_new_tokens=args.max_new_tokens)
        records.append(answer_record(answer, kind, q.at))
        if not args.json:
            progress.write(format_answer(answer), out)

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
    if args.host_codec is not None:
        _warn_if_host_unused(session, args.host_codec)
    if not args.json:
        stats = session.stats()
        held = sum(stats.bytes_per_tier.values())
        rtf = stream_t / stream_wall if stream_wall > 0 else 0.0
        print(
            f"watched {frames} frames, {stream_t:.1f}s of stream in {stream_wall:.1f}s "
            f"({rtf:.2f}x real time); {stats.blocks} blocks, {human_bytes(held)} held",
            file=sys.stderr,
            flush=True,
        )
    for q in pending:  # times past the end of the video: asked once the whole video is in
        ask(q, "ask-at")
    for q in at_end:
        ask(q, "ask")

    if interactive:
        ask_from_stdin(session, args.max_new_tokens, memory.max_question_chars, stream_t)
    if session.memory.disk_dir is not None:
        session.close()  # checkpoint: the directory can be resumed with --resume

    if args.json:
        backend = getattr(engine, "backend", None)
        doc = {
            "model": args.model,
            "model_card": card.to_dict(),  # kind and what the model can answer, as the server's
            "device": str(getattr(backend, "device", args.device)),
            "dtype": str(getattr(backend, "dtype", args.dtype)).removeprefix("torch."),
            "video": {"path": str(video), **plain(info)} if video is not None else None,
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
            "stats": plain(session.stats().to_dict()),
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    return 0


def _check_resumable(args: argparse.Namespace) -> None:
    """Refuse with ``--resume`` the options a saved session fixed: they would do nothing."""
    if args.disk_dir is not None:
        raise ConfigError("--resume DIR continues the session in DIR; leave out --disk-dir")
    fixed = fixed_memory_flags(args)
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot change a saved session (they define what it stores); "
            "leave them out with --resume"
        )


def _warn_if_host_unused(session, codec: str) -> None:
    """Say on stderr when ``--host-codec`` did nothing: every block stayed on the device."""
    blocks = session.blocks
    if session.stats().dropped_blocks == 0 and all(blocks.tier_of(m.id) == "device" for m in blocks.metas()):
        print(
            f"warning: --host-codec {codec} did nothing: every block stayed on the device; "
            "give a smaller --device-bytes to keep older blocks in host RAM",
            file=sys.stderr,
        )


def _open_session(args: argparse.Namespace, engine):
    """A new session with the memory options given (the rest as the model recommends), or
    the one saved in ``--resume DIR`` with the options it may take from the command line
    (those :func:`_check_resumable` let through)."""
    if args.resume is None:
        return engine.new_session(memory=engine.memory(**memory_overrides(args)))
    from .. import Session

    return Session.resume(args.resume, engine, **memory_overrides(args))


def _sampled_frames(source, fps: float):
    from ..ingest import Sampler

    return iter(Sampler(fps=fps).sample(source))


def ask_from_stdin(session, max_new_tokens: int, max_chars: int, stream_t: float) -> None:
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
            print(printable(delta), end="", flush=True)
        print(flush=True)
