"""Clients of a streamvlm server (``streamvlm serve``; the protocol is ``docs/protocol.md``).

``AsyncStreamClient`` (asyncio) and ``StreamClient`` (the same, for plain threads) open
a session over REST, stream frames to it over its websocket and ask questions whose
answers stream back. ``streamvlm stream`` (``cli.py``) is a command line built on them.

Names are imported on first use, so the CLI parser (``client.cli``) loads without
``websockets`` and without torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "AsyncStreamClient": "streamvlm.client.async_client",
    "AnswerStream": "streamvlm.client.async_client",
    "StreamClient": "streamvlm.client.sync_client",
    "SyncAnswerStream": "streamvlm.client.sync_client",
    "ClientError": "streamvlm.client.rest",
    "encode_frame": "streamvlm.client.frames",
}

if TYPE_CHECKING:
    from .async_client import AnswerStream, AsyncStreamClient
    from .frames import encode_frame
    from .rest import ClientError
    from .sync_client import StreamClient, SyncAnswerStream


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "AnswerStream",
    "AsyncStreamClient",
    "ClientError",
    "StreamClient",
    "SyncAnswerStream",
    "encode_frame",
]
