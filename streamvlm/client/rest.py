"""One-call JSON requests to a streamvlm server with the standard library (urllib).

Blocking on purpose: the async client runs them in a thread, so the client needs no
HTTP library beyond what ``websockets`` already brings.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import StreamVLMError

# the header a cluster's router sends a session's requests by (docs/deploy.md)
ROUTING_HEADER = "x-session-id"


class ClientError(StreamVLMError):
    """The server refused a request or a message, or the connection failed.

    ``code`` is the server's error code (``docs/protocol.md``: ``unauthorized``,
    ``bad_option``, ``frame_too_large``, ...) or ``connection`` / ``closed`` for
    transport failures; ``status`` the HTTP status when there was one.
    """

    def __init__(self, code: str, message: str, status: int | None = None, **context: Any):
        super().__init__(" ".join(str(message).split()))
        self.code = code
        self.status = status
        self.context = context


def base_url(server: str) -> str:
    """``server`` as ``http(s)://host:port`` with no trailing slash; ``host:port`` means http."""
    server = server.strip().rstrip("/")
    if "://" not in server:
        server = "http://" + server
    scheme = urllib.parse.urlsplit(server).scheme
    if scheme not in ("http", "https"):
        raise ClientError("bad_url", f"server URL must be http:// or https://, got {server!r}")
    return server


def websocket_url(server: str, path: str) -> str:
    """The ``ws(s)://`` URL of ``path`` on ``server`` (https gives wss)."""
    base = base_url(server)
    return ("wss://" + base[len("https://") :] if base.startswith("https://") else "ws://" + base[7:]) + path


def request_json(
    server: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> Any:
    """Send one request, return the parsed JSON reply; raise ``ClientError`` on any failure."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url(server) + path, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as e:
        raise _http_error(e) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ClientError("connection", f"cannot reach {base_url(server)}: {reason}") from None
    try:
        return json.loads(text) if text else {}
    except ValueError:
        raise ClientError("bad_reply", f"{method} {path} did not answer with JSON") from None


def _http_error(e: urllib.error.HTTPError) -> ClientError:
    text = e.read().decode(errors="replace")
    try:
        error = json.loads(text)["error"]
        return ClientError(error["code"], error["message"], status=e.code)
    except (ValueError, KeyError, TypeError):  # not one of the server's JSON errors (a proxy, say)
        return ClientError("http_error", f"HTTP {e.code}: {text[:200] or e.reason}", status=e.code)
