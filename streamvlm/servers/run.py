"""Serving the app with uvicorn, with the websocket limits taken from the settings."""

from __future__ import annotations

import socket

import uvicorn

from ..errors import ConfigError
from .app import create_app
from .settings import ServerSettings


def build_server(
    app, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> uvicorn.Server:
    """A ``uvicorn.Server`` for ``app`` whose websocket message limit is ``settings.max_message_bytes``.

    Per-message compression is off: frames are already compressed images, and a
    compressed message is a way to make the server inflate far more than it received.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=False,
        log_level=log_level,
        server_header=False,
    )
    return uvicorn.Server(config)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` now (port 0: any free port), so a port in use is reported before
    a model is loaded, and the real port is known before serving starts.

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, ...).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(
    engine,
    settings: ServerSettings,
    host: str,
    port: int,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Serve ``engine`` until interrupted (``streamvlm serve``)."""
    server = build_server(create_app(engine, settings), settings, host, port, log_level)
    server.run(sockets=[sock] if sock is not None else None)
