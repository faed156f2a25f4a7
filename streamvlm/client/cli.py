"""``streamvlm stream``: stream a webcam or a video file to a server, ask questions typed
at the prompt while the frames flow, print the streamed answers.

The parser is built at CLI start-up: this module imports only the standard library
(the client, the sources and with them ``websockets`` and torch load when the command runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from ..cli_options import (
    QUIT_WORDS,
    add_max_new_tokens_option,
    add_memory_options,
    check_input_file,
    memory_config,
    memory_overrides,
)
from ..errors import ConfigError

API_KEY_ENV = "STREAMVLM_API_KEY"  # as servers.settings.API_KEY_ENV (the same variable on both ends)
DEFAULT_FPS = 1.0
ENCODER_POLL_S = 0.2


def add_stream_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``stream`` to the CLI's subcommands; returns its parser."""
    s = subparsers.add_parser(
        "stream",
        help="stream a webcam or a video file to a server and ask questions (docs/protocol.md)",
        description=(
            "Open a session on a streamvlm server (streamvlm serve), stream frames to it and "
            "answer questions typed at the prompt, one per line, while the frames flow. A file "
            "streams once (then questions go on until end of input or 'quit'); a webcam streams "
            "until end of input, 'quit', --duration or Ctrl-C. Answers go to stdout, status to stderr."
        ),
    )
    s.add_argument("--server", required=True, metavar="URL", help="server URL, e.g. http://127.0.0.1:8000")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--webcam", type=int, metavar="N", help="stream webcam N (needs OpenCV)")
    source.add_argument("--file", metavar="VIDEO", help="stream a video file (anything FFmpeg decodes)")
    s.add_argument(
        "--realtime",
        action="store_true",
        help="send file frames at their own times (default: as fast as the server encodes them)",
    )
    s.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frames per second of stream time sent (0: every frame; default: {DEFAULT_FPS:g})",
    )
    s.add_argument(
        "--api-key", default=None, metavar="KEY", help=f"the server's API key (default: ${API_KEY_ENV})"
    )
    s.add_argument(
        "--ask",
        action="append",
        default=[],
        metavar="Q",
        help="question to ask once the file has been streamed (repeatable)",
    )
    add_max_new_tokens_option(s)
    add_memory_options(s, "top_k", "window")  # not given: the server's (the model's recommended) defaults
    s.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop sending after this much stream time",
    )
    s.add_argument(
        "--keep-session", action="store_true", help="leave the session open on the server at the end"
    )
    s.set_defaults(func=cmd_stream)
    return s


def cmd_stream(args: argparse.Namespace) -> int:
    """Run ``streamvlm stream``; exit code 0, or 2 (through ``StreamVLMError``) on bad input."""
    if args.fps is not None and args.fps < 0:
        raise ConfigError(f"--fps must be >= 0, got {args.fps}")
    if args.realtime and args.webcam is not None:
        raise ConfigError("--realtime is for --file; a webcam always streams in real time")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.file:
        check_input_file(args.file)
    memory_config(args)  # --window and --top-k in range: the server would refuse them after connecting
    try:
        from .async_client import AsyncStreamClient  # noqa: F401  (needs websockets)
    except ImportError as e:
        raise ConfigError(
            f"streamvlm stream needs the server extra ({e.name} is missing): pip install 'streamvlm[server]'"
        ) from None
    from .sources import file_frames, webcam_frames

    fps = args.fps or None
    frames = file_frames(args.file, fps) if args.file else webcam_frames(args.webcam, fps)
    return asyncio.run(_stream(args, frames, sys.stdin, sys.stdout, sys.stderr))


async def _stream(args, frames: Iterator, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    from .async_client import AsyncStreamClient

    memory = memory_overrides(args) or None  # not given: the server's (the model's recommended) defaults
    client = AsyncStreamClient(
        args.server,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        memory=memory,
        max_in_flight=2,  # a frame on the wire while the last one is decoded: pace by the server
        delete_on_exit=not args.keep_session,
        on_error=lambda m: print(f"server: {m.get('code')}: {m.get('message')}", file=err, flush=True),
    )
    options = {"max_new_tokens": args.max_new_tokens}
    async with client:
        session = client.session
        print(
            f"streamvlm: session {session['id'][:8]} on {args.server}; type a question and Enter, 'quit' to stop",
            file=err,
            flush=True,
        )
        print(_model_line(session), file=err, flush=True)
        printing = asyncio.Lock()  # one answer on the screen at a time
        sending = asyncio.create_task(_send(client, frames, args, err))
        asking = asyncio.create_task(_ask_typed(client, _lines(stdin), options, printing, out, err, stdin))
        await asyncio.wait({sending, asking}, return_when=asyncio.FIRST_COMPLETED)
        quit_typed = asking.done() and asking.result()
        if asking.done() and (quit_typed or (args.webcam is not None and args.duration is None)):
            sending.cancel()  # 'quit', or a webcam with nobody left to ask: stop streaming
        await asyncio.gather(sending, return_exceptions=True)
        if not sending.cancelled() and sending.exception() is not None:
            asking.cancel()
            raise sending.exception()
        if not quit_typed:
            for question in args.ask:
                async with printing:
                    await _answer(client, question, options, out, err, echo=True)
        await asking
        final = await client.close()
    if final is not None:
        print(_summary(client.frames_sent, final), file=err, flush=True)
    return 0


async def _send(client, frames: Iterator, args, err: TextIO) -> dict:
    """Send frames at the source's pace: a file's own times with ``--realtime``, else as
    fast as the server takes them without dropping any; a webcam as it delivers."""
    limits = client.session.get("limits", {})
    # stay under the session's frame-rate limit, or frames would be dropped on arrival
    min_gap = 1.0 / (0.9 * limits["max_fps"]) if limits.get("max_fps") else 0.0
    queue_cap = max(1, client.session.get("memory", {}).get("queue_frames", 64) // 2)
    loop = asyncio.get_running_loop()
    start, first_t, last_sent = loop.time(), None, -1e9
    while True:
        item = await asyncio.to_thread(next, frames, None)  # decoding blocks: keep it off the loop
        if item is None:
            break
        rgb, t = item
        first_t = t if first_t is None else first_t
        if args.duration is not None and t - first_t > args.duration:
            break
        if args.realtime:
            await asyncio.sleep(max(0.0, start + (t - first_t) - loop.time()))
        elif args.file is not None:
            await _wait_for_encoder(client, queue_cap)
        await asyncio.sleep(max(0.0, last_sent + min_gap - loop.time()))
        last_sent = loop.time()
        await client.send_frame(rgb, t)
    await client.wait_in_flight(0)
    ack = client.last_ack or {}
    print(f"streamvlm: end of stream: {client.frames_sent} frames sent", file=err, flush=True)
    return ack


async def _wait_for_encoder(client, queue_cap: int) -> None:
    """Hold a file's frames while the session's encoder queue is half full: as fast as
    possible, but no frame pushed out of the queue (a file is not a live edge to keep up with)."""
    ack = client.last_ack
    if ack is None or ack.get("queue_depth", 0) < queue_cap:
        return
    while True:  # acks come only in reply to frames: ask the session how its queue is doing
        await asyncio.sleep(ENCODER_POLL_S)
        if (await client.stats())["frames"]["queue_depth"] < queue_cap:
            return


async def _ask_typed(client, lines, options: dict, printing, out: TextIO, err: TextIO, stdin) -> bool:
    """Ask each line typed as a question; True when the user typed quit, False at end of input."""
    interactive = stdin.isatty()
    while True:
        line = await lines.get()
        if line is None:
            return False
        question = line.strip()
        if not question:
            continue
        if question.lower() in QUIT_WORDS:
            return True
        async with printing:
            await _answer(client, question, options, out, err, echo=not interactive)


async def _answer(client, question: str, options: dict, out: TextIO, err: TextIO, echo: bool) -> None:
    """Ask one question and print its answer as it streams."""
    from .rest import ClientError

    if echo:
        print(f"? {question}", file=out, flush=True)
    try:
        stream = await client.ask(question, **options)
        async for delta in stream:
            out.write(delta)
            out.flush()
        done = stream.done
    except ClientError as e:
        print(f"error: {e.code}: {e}", file=err, flush=True)
        return
    print(file=out, flush=True)
    spans = ", ".join(f"{s['t_start']:.1f}-{s['t_end']:.1f}s" for s in done.get("spans", [])) or "none"
    timings = done.get("timings", {})
    print(
        f"  (asked at {done.get('asked_at') or 0:.1f}s; attended {spans}; {timings.get('latency_s', 0):.2f} s)",
        file=err,
        flush=True,
    )


def _lines(stdin: TextIO) -> asyncio.Queue:
    """Lines of ``stdin`` as they are typed (``None`` at end of input), read by a thread:
    a blocking read cannot be cancelled, so the thread is a daemon the process leaves behind."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        try:
            for line in stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop has closed: the command is over
            pass

    threading.Thread(target=read, name="streamvlm-stdin", daemon=True).start()
    return queue


def _summary(sent: int, ack: dict) -> str:
    return (
        f"streamvlm: {sent} frames sent, {ack['encoded']} encoded, {ack['dropped']} dropped, "
        f"{ack['rejected']} rejected; stream time {ack.get('stream_time') or 0:.1f}s"
    )


def _model_line(session: dict) -> str:
    """The server's model and what it can answer (``ModelCard.line``), from the session's info."""
    from ..models.catalog import ModelCard

    card = session.get("model_card")
    return ModelCard(**card).line() if isinstance(card, dict) else f"model {session.get('model')}"
