"""``streamvlm demo``: serve the Gradio live demo, alone or beside the server's API.

The parser is built at CLI start-up: this module imports neither Gradio nor torch; the
command imports them when it runs.
"""

from __future__ import annotations

import argparse
import math

from ..cli_options import (
    add_listen_options,
    add_max_new_tokens_option,
    add_memory_options,
    add_model_options,
    announce_listening,
    check_model_options,
    check_port,
    load_model,
    memory_config,
    memory_overrides,
    note_memory_options,
)
from ..errors import ConfigError

DEFAULT_FPS = 2.0  # demos.app.DEFAULT_FPS; that module imports Gradio
DEFAULT_MAX_SESSIONS = 8


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` command to the ``streamvlm`` subparsers; returns its parser."""
    d = subparsers.add_parser(
        "demo",
        help="serve the Gradio live demo: webcam or video in, questions and answers out (docs/demo.md)",
        description=(
            "Load a model and serve a web page where a webcam or a video file streams into a "
            "session, questions get streamed answers, a panel shows the session's memory and each "
            "answer shows the frames it attended. Needs the demo extra: pip install 'streamvlm[demo]'."
        ),
    )
    add_model_options(d)
    add_listen_options(d, port=7860)
    d.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frames per second sent from the webcam and sampled from videos (default: {DEFAULT_FPS:g})",
    )
    add_memory_options(d, "window", "top_k", "prune")
    add_max_new_tokens_option(d)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``streamvlm demo``: load the model, build the app and serve it until interrupted."""
    check_port(args.port)
    if not (math.isfinite(args.fps) and 0 < args.fps <= 30):
        raise ConfigError(f"--fps must be in (0, 30], got {args.fps}")
    if args.max_sessions < 1:
        raise ConfigError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    check_model_options(args)
    memory_config(args)  # checked before the model loads
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

    engine = load_model(args)
    note_memory_options(args)
    settings = ServerSettings.from_env()
    if args.with_api:
        from ..servers.app import create_app

        app, path = create_app(engine, settings), "/demo"
    else:
        app, path = FastAPI(title="streamvlm demo"), "/"
    memory = engine.memory(**memory_overrides(args))  # the options not given: as the model recommends
    sessions = DemoSessions(engine, memory, max_sessions=args.max_sessions)
    mount_demo(app, engine, path, sessions=sessions, fps=args.fps, max_new_tokens=args.max_new_tokens)

    host, port = sock.getsockname()[:2]
    # The API key guards the REST and websocket routes, not the page: a browser sends none.
    anyone = "with no authentication on the demo page: anyone who can reach it can use it"
    announce_listening(f"demo of {engine.model_name}", host, port, f"{path.rstrip('/')}/", open_to=anyone)
    build_server(app, settings, args.host, port, log_level="warning").run(sockets=[sock])
    return 0
