"""HTTP and websocket serving: ``create_app(engine, settings)``, ``streamvlm serve``.

Needs the ``server`` extra (FastAPI, uvicorn, websockets). The protocol is written down
in ``docs/protocol.md``; ``protocol.py`` has the frame header and message helpers a
client can reuse. Names are imported on first use, so ``protocol`` and ``settings``
(used by the CLI parser and by clients) load without FastAPI, uvicorn or torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "create_app": "streamvlm.servers.app",
    "build_server": "streamvlm.servers.run",
    "bind_socket": "streamvlm.servers.run",
    "serve": "streamvlm.servers.run",
    "ServerSettings": "streamvlm.servers.settings",
    "API_KEY_ENV": "streamvlm.servers.settings",
    "ProtocolError": "streamvlm.servers.protocol",
    "FRAME_HEADER": "streamvlm.servers.protocol",
    "FRAME_MAGIC": "streamvlm.servers.protocol",
    "HEADER_SIZE": "streamvlm.servers.protocol",
    "pack_frame": "streamvlm.servers.protocol",
    "unpack_frame": "streamvlm.servers.protocol",
}

if TYPE_CHECKING:
    from .app import create_app
    from .protocol import FRAME_HEADER, FRAME_MAGIC, HEADER_SIZE, ProtocolError, pack_frame, unpack_frame
    from .run import bind_socket, build_server, serve
    from .settings import API_KEY_ENV, ServerSettings


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "API_KEY_ENV",
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "HEADER_SIZE",
    "ProtocolError",
    "ServerSettings",
    "bind_socket",
    "build_server",
    "create_app",
    "pack_frame",
    "serve",
    "unpack_frame",
]
