"""``streamvlm serve``: load a model and serve it over HTTP and websockets (docs/protocol.md).

The parser is built at CLI start-up: this module imports only ``servers.settings``
(plain Python); FastAPI, uvicorn and torch load when the command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

from ..cli_options import (
    add_listen_options,
    add_model_options,
    announce_listening,
    check_model_options,
    check_port,
    load_model,
)
from ..errors import ConfigError
from .ray_cli import add_ray_options, cluster_settings_from_args, cmd_serve_ray
from .settings import API_KEY_ENV, ServerSettings


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the CLI's subcommands; returns its parser."""
    d = ServerSettings()
    s = subparsers.add_parser(
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
    add_model_options(s)
    add_listen_options(s, port=8000)
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
        type=idle_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "delete a session with no connection and no request for this long; 0 or 'none': never "
            f"(default: {d.idle_timeout_s:g}). A session its client ends with 'close' is deleted at once"
        ),
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
    add_ray_options(s)
    s.set_defaults(func=cmd_serve)
    return s


def idle_seconds(text: str) -> float:
    """``--idle-timeout``: seconds >= 0, or ``none``/``never`` (both mean 0: never expire)."""
    if text.strip().lower() in ("none", "never"):
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, or 0/none for never, got {text!r}")
    return seconds


def _settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The environment's ``ServerSettings`` with the limits given on the command line.

    Raises:
        ConfigError: a limit out of range, or an ``--allow-dir`` that is not a directory.
    """
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
    return replace(settings, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``streamvlm serve`` until interrupted; bad options fail before the model loads."""
    check_port(args.port)
    cluster_settings_from_args(args)  # the cluster options, before anything slow
    check_model_options(args)
    settings = _settings_from_args(args)
    if args.ray:
        return cmd_serve_ray(args, settings)
    try:
        from .run import bind_socket, serve
    except ImportError as e:
        raise ConfigError(
            f"streamvlm serve needs the server extra ({e.name} is missing): pip install 'streamvlm[server]'"
        ) from None
    sock = bind_socket(args.host, args.port)  # ConfigError when in use: before the model loads

    engine = load_model(args)
    host, port = sock.getsockname()[:2]
    unguarded = f"with no {API_KEY_ENV}: anyone who can reach it can open sessions"
    announce_listening(
        f"serving {engine.model_name}", host, port, open_to=unguarded if settings.api_key is None else None
    )
    for directory in settings.allowed_dirs:
        print(f"streamvlm: clients may read videos under {directory}", file=sys.stderr, flush=True)
    serve(engine, settings, args.host, port, args.log_level, sock=sock)
    return 0
