"""The request side of ``POST /v1/chat/completions``: checking the body, the inline video,
and a video file named by path inside a directory the operator allowed (``--allow-dir``).

Every refusal is a ``ProtocolError`` with a one-line message (docs/protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .protocol import ProtocolError, check_question_option
from .settings import ServerSettings

DEFAULT_MAX_TOKENS = 128
MAX_VIDEO_FPS = 30.0
# Extra fields under "streamvlm" and the question options each one becomes.
EXTRA_OPTIONS = ("top_k", "answer_window", "since", "until", "wait")


@dataclass(frozen=True)
class ChatCall:
    """A checked chat completion request."""

    question: str
    session_id: str | None
    video: bytes | None
    video_suffix: str
    fps: float
    stream: bool
    include_usage: bool
    options: dict[str, Any] = field(default_factory=dict)  # Session.ask_stream keyword arguments
    # A video named by path (``file://`` URL or absolute path), not yet checked against
    # ``settings.allowed_dirs`` nor read: ``read_video_file`` does both, off the event loop.
    video_path: str | None = None


def parse_chat(body: Any, settings: ServerSettings, model_name: str) -> ChatCall:
    """Check a chat completion body; raises ``ProtocolError`` with a one-line message."""
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "the body must be a JSON object with 'messages'")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ProtocolError(
            "model_not_found", f"this server runs {model_name!r}, not {str(model)[:80]!r}", status=404
        )
    if body.get("n", 1) != 1:
        raise ProtocolError("bad_option", "n must be 1: one answer per request")
    question, video_url = _last_user_message(body.get("messages"), settings.max_question_chars)
    extra = body.get("streamvlm", {})
    if not isinstance(extra, dict):
        raise ProtocolError("bad_option", '"streamvlm" must be an object, e.g. {"session": "<id>"}')
    unknown = set(extra) - {"session", "fps", *EXTRA_OPTIONS}
    if unknown:
        raise ProtocolError("bad_option", f"unknown streamvlm option {sorted(unknown)[0][:40]!r}")
    session_id = extra.get("session")
    if session_id is not None and not isinstance(session_id, str):
        raise ProtocolError("bad_option", "streamvlm.session must be a session id (a string)")
    if (session_id is None) == (video_url is None):
        raise ProtocolError(
            "bad_request",
            "name a session in streamvlm.session, or send one video_url content part; exactly one of them",
        )
    options = _sampling(body, settings)
    for name in EXTRA_OPTIONS:
        if name in extra:
            check_question_option(name, extra[name], settings.max_new_tokens)
            options[name] = extra[name]
    fps = extra.get("fps", 1.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_VIDEO_FPS:
        raise ProtocolError(
            "bad_option", f"streamvlm.fps must be a number in (0, {MAX_VIDEO_FPS:g}], got {fps!r}"
        )
    video, suffix, path = None, "", None
    if video_url is not None:
        path = _video_path(video_url, settings)
        if path is None:
            video, suffix = _decode_video_url(video_url, settings)
    stream_options = body.get("stream_options") or {}
    return ChatCall(
        question=question,
        session_id=session_id,
        video=video,
        video_suffix=suffix,
        video_path=path,
        fps=float(fps),
        stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        options=options,
    )


def _last_user_message(messages: Any, max_chars: int) -> tuple[str, str | None]:
    """The question text and the video URL (if any) of the last user message.

    Earlier turns are not used: a session's memory is the context, not the chat history.
    """
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("bad_request", "messages must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ProtocolError("bad_request", "messages have no user message to answer")
    content = users[-1].get("content")
    texts: list[str] = []
    videos: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "video_url" and isinstance(part.get("video_url"), dict):
                videos.append(part["video_url"].get("url"))
            else:
                raise ProtocolError(
                    "bad_request",
                    f"unsupported content part {str(kind)[:40]!r}: use text and at most one video_url "
                    "(stream single frames over the websocket)",
                )
    else:
        raise ProtocolError("bad_request", "a user message's content must be a string or a list of parts")
    if len(videos) > 1:
        raise ProtocolError("bad_request", "send at most one video_url per request")
    question = "\n".join(texts).strip()
    if not question:
        raise ProtocolError("bad_question", "the last user message has no text to answer")
    if len(question) > max_chars:
        raise ProtocolError(
            "question_too_long", f"question is {len(question)} characters, over the limit of {max_chars}"
        )
    return question, videos[0] if videos else None


def _sampling(body: dict, settings: ServerSettings) -> dict[str, Any]:
    """OpenAI sampling fields as ``SamplingParams`` options."""
    options: dict[str, Any] = {}
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = min(DEFAULT_MAX_TOKENS, settings.max_new_tokens)
    check_question_option("max_new_tokens", tokens, settings.max_new_tokens)
    options["max_new_tokens"] = tokens
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            check_question_option(name, body[name], settings.max_new_tokens)
            options[name] = body[name]
    return options


def _video_path(url: Any, settings: ServerSettings) -> str | None:
    """The path a ``video_url`` names (a ``file:`` URL or a scheme-less path), else ``None``.

    With no allowed directory every path is refused here, before anything is looked up.
    """
    if not isinstance(url, str) or url.startswith("data:"):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise _not_allowed(settings)
        try:
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            raise _not_allowed(settings) from None
    elif parts.scheme == "":
        path = url
    else:
        return None  # http:, https:, ...: refused as not a data: URL
    if not settings.allowed_dirs or not os.path.isabs(path) or "\0" in path:
        raise _not_allowed(settings)
    return path


def _not_allowed(settings: ServerSettings) -> ProtocolError:
    if not settings.allowed_dirs:
        return ProtocolError(
            "path_not_allowed",
            "this server reads no file a client names unless its operator passes --allow-dir; "
            "send the video inline as a base64 data: URL",
            status=403,
        )
    return ProtocolError(
        "path_not_allowed",
        "video_url must name a regular file inside a directory the operator allowed with --allow-dir, "
        "as a file:// URL or an absolute path",
        status=403,
    )


def read_video_file(path: str, settings: ServerSettings) -> tuple[bytes, str]:
    """The bytes and container suffix of the video at ``path`` (from ``parse_chat``), if allowed.

    Allowed means: the real path (symlinks followed, ``..`` collapsed) lies inside one of
    ``settings.allowed_dirs`` and is a regular file. Anything else is ``403
    path_not_allowed`` whether or not it exists, so a client learns nothing about the disk
    outside those directories; a missing file inside one is ``404 video_not_found``. The
    bytes then go through the same checks as an inline video (size, container sniffing).
    Does blocking file I/O: call it in a thread.
    """
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        raise _not_allowed(settings) from None
    if not any(_inside(real, d) for d in settings.allowed_dirs):
        raise _not_allowed(settings)
    # O_NOFOLLOW: the last component was resolved above and must still not be a link;
    # O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just below).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise ProtocolError(
            "video_not_found", "no such file in the allowed directories", status=404
        ) from None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise ProtocolError(
                "video_not_found", "no such file in the allowed directories", status=404
            ) from None
        raise _not_allowed(settings) from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        raise _not_allowed(settings)
    with os.fdopen(fd, "rb") as f:  # owns fd from here
        data = f.read(settings.max_video_bytes + 1)
    if len(data) > settings.max_video_bytes:
        raise ProtocolError(
            "video_too_large", f"the video is over the limit of {settings.max_video_bytes} bytes", status=413
        )
    return data, _container_suffix(data)


def _inside(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([path, directory]) == directory
    except ValueError:
        return False


def _decode_video_url(url: Any, settings: ServerSettings) -> tuple[bytes, str]:
    """The bytes of a ``data:video/...;base64,...`` URL and a file suffix matching their container.

    The server fetches no URL; a path (``file://`` or absolute) is handled by
    ``_video_path`` and ``read_video_file``, never here. The container is recognised
    from the bytes (MP4/MOV or Matroska/WebM), never from the client's MIME type, so
    FFmpeg never probes formats that can point at other files (playlists, concat lists).
    """
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ProtocolError(
            "bad_video",
            "video_url must be a base64 data: URL (or, where the operator allowed a directory, a file:// URL); "
            "the server fetches no URLs",
        )
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64") or not head[5:].startswith("video/"):
        raise ProtocolError("bad_video", "video_url must look like data:video/mp4;base64,<data>")
    if len(payload) * 3 // 4 > settings.max_video_bytes:
        raise ProtocolError(
            "video_too_large", f"the video is over the limit of {settings.max_video_bytes} bytes", status=413
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_video", "video_url's data is not valid base64") from None
    return data, _container_suffix(data)


def _container_suffix(data: bytes) -> str:
    """``.mp4`` or ``.mkv`` by the bytes' container, else ``bad_video``."""
    if data[4:8] == b"ftyp":
        return ".mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ".mkv"
    raise ProtocolError("bad_video", "the video must be MP4/MOV or Matroska/WebM")
