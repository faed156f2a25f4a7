"""``streamvlm demo``: serve the Gradio live demo, alone or beside the server's API.

The parser is built at CLI start-up: this module imports neither Gradio nor torch; the
command imports them when it runs.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..config import MemoryConfig
from ..errors import ConfigError

DEFAULT_FPS = 2.0  # demos.app.DEFAULT_FPS; that module imports Gradio
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_MAX_SESSIONS = 8
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` command to the ``streamvlm`` subparsers; returns its parser."""
    from ..cli import DEFAULT_MODEL  # here, not at the top: streamvlm.cli imports this module

    d = subparsers.add_parser(
        "demo",
        help="serve the Gradio live demo: webcam or video in, questions and answers out (docs/demo.md)",
        description=(
            "Load a model and serve a web page where a webcam or a video file streams into a "
            "session, questions get streamed answers, a panel shows the session's memory and each "
            "answer shows the frames it attended. Needs the demo extra: pip install 'streamvlm[demo]'."
        ),
    )
    d.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name, path or hub id (default: {DEFAULT_MODEL})"
    )
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    d.add_argument("--port", type=int, default=7860, help="port; 0 picks a free one (default: 7860)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    d.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: per device)")
    d.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frames per second sent from the webcam and sampled from videos (default: {DEFAULT_FPS:g})",
    )
    d.add_argument(
        "--window",
        type=int,
        default=MemoryConfig.window,
        metavar="N",
        help=f"frames of recent context each chunk attends to (default: {MemoryConfig.window})",
    )
    d.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="N",
        help="answer over the N blocks retrieved per question (+ the window); default: every block",
    )
    d.add_argument(
        "--prune",
        type=float,
        default=None,
        metavar="TAU",
        help="drop visual tokens at least TAU alike to the last kept one at their place (docs/pruning.md)",
    )
    d.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"default answer length in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    d.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"browser tabs with a session at once (default: {DEFAULT_MAX_SESSIONS})",
    )
    d.add_argument(
        "--with-api",
        action="store_true",
        help="serve the full server app (REST, websocket, OpenAI endpoint) with the demo at /demo",
    )
    d.set_defaults(func=cmd_demo)
    return d


def memory_from_args(args: argparse.Namespace) -> MemoryConfig:
    """The session memory options given on the command line."""
    return MemoryConfig(window=args.window, top_k=args.top_k, prune_threshold=args.prune)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``streamvlm demo``: load the model, build the app and serve it until interrupted."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if not (math.isfinite(args.fps) and 0 < args.fps <= 30):
        raise ConfigError(f"--fps must be in (0, 30], got {args.fps}")
    if args.max_new_tokens < 1 or args.max_sessions < 1:
        raise ConfigError("--max-new-tokens and --max-sessions must be >= 1")
    memory = memory_from_args(args)
    try:
        from fastapi import FastAPI

        from ..servers.run import bind_socket, build_server
        from ..servers.settings import ServerSettings
        from .app import mount_demo
        from .state import DemoSessions
    except ImportError as e:
        raise ConfigError(
            f"streamvlm demo needs the demo and server extras ({e.name} is missing): "
            "pip install 'streamvlm[demo,server]'"
        ) from None
    sock = bind_socket(args.host, args.port)  # ConfigError when in use: before the model loads

    from .. import StreamVLM

    kwargs = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    engine = StreamVLM.from_pretrained(args.model, **kwargs)
    settings = ServerSettings.from_env()
    if args.with_api:
        from ..servers.app import create_app

        app, path = create_app(engine, settings), "/demo"
    else:
        app, path = FastAPI(title="streamvlm demo"), "/"
    sessions = DemoSessions(engine, memory, max_sessions=args.max_sessions)
    mount_demo(app, engine, path, sessions=sessions, fps=args.fps, max_new_tokens=args.max_new_tokens)

    host, port = sock.getsockname()[:2]
    if host not in LOOPBACK:
        # The API key guards the REST and websocket routes, not the page: a browser sends none.
        print(
            f"warning: the demo on {host} has no authentication: anyone who can reach it can use it",
            file=sys.stderr,
        )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"streamvlm: demo of {engine.model_name} on http://{shown}:{port}{path.rstrip('/')}/",
        file=sys.stderr,
        flush=True,
    )
    build_server(app, settings, args.host, port, log_level="warning").run(sockets=[sock])
    return 0
