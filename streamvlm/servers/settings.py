"""Every limit the server enforces, in one dataclass with defaults that work."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from ..cluster.settings import ClusterSettings
from ..errors import ConfigError
from .protocol import HEADER_SIZE

API_KEY_ENV = "STREAMVLM_API_KEY"


@dataclass(frozen=True)
class ServerSettings:
    """Limits and access control of a streamvlm server (``create_app``, ``streamvlm serve``).

    Access:

    api_key:
        When set (``STREAMVLM_API_KEY``), creating a session and reading ``/metrics`` need
        ``Authorization: Bearer <api_key>``. Session endpoints always need that session's
        own token, returned when it is created, whether or not an API key is set. The key
        is also the operator's: with it ``GET /v1/sessions`` lists every session and
        ``DELETE /v1/sessions/{id}`` deletes any. Without a key those two are refused
        (``403 operator_disabled``): nobody could tell an operator from anyone else.

    Sessions:

    max_sessions:
        Sessions open at once on this server; more are refused (503 ``too_many_sessions``).
    idle_timeout_s:
        A session with no stream connection and no request for this long is closed
        (``None`` or ``0``: never), so abandoned sessions do not hold memory and slots for
        ever. A session its client ends with the websocket ``close`` message is deleted at
        once unless it was created with ``"persist": true``; one whose client just
        disconnects waits for this timeout.
    max_window, max_chunk_frames, max_queue_frames, max_device_bytes, max_host_bytes:
        Upper bounds on the ``MemoryConfig`` options a client may ask for: they set the
        compute per frame and the memory one session may hold.
    max_system_prompt_chars:
        Longest system prompt a client may give a session.

    Frames (per websocket binary message):

    max_frame_bytes:
        Encoded image size (after the header); larger frames get ``frame_too_large``.
    max_frame_side, max_frame_pixels:
        Width or height, and width x height, read from the image header before it is
        decoded (so a small file cannot expand into a huge bitmap): ``frame_dimensions``.
    max_fps:
        Frames per second a session accepts, averaged over a second (a token bucket);
        frames over it are dropped, counted and acked as dropped, never decoded.

    Messages and questions:

    max_text_bytes:
        A JSON control message, and the body of a REST request (``message_too_large``, 413).
    max_message_bytes:
        The websocket's hard limit on any one message: past it the connection is closed
        with code 1009. Keep it above ``max_frame_bytes`` so too large frames get an
        ``error`` and the connection stays open.
    max_question_chars:
        Longest question (``question_too_long``).
    max_new_tokens:
        Largest ``max_new_tokens`` a question may ask for (``bad_option``).
    max_pending_questions:
        Questions that may wait behind the one being answered on a connection
        (``too_many_questions``).

    Videos sent inline to ``/v1/chat/completions`` (a ``video_url`` data URL):

    max_video_bytes:
        Decoded size of the video (the request body may be a third larger: base64).
    max_video_seconds:
        Longest video by its container's duration: decoding costs time for every
        frame, sampled or not.
    max_video_frames:
        Frames sampled from it (at the request's ``fps``) and encoded. Both limits are
        checked from the container's metadata before a frame is encoded; a container
        that gives no duration is counted while it is decoded.
    stream_keepalive_s:
        With ``"stream": true``, the longest silence while an inline video is encoded:
        an SSE comment with the progress (``: encoding 12/19 frames``) is sent this often,
        so the client and any proxy see the response alive from its first moment.

    Threads:

    decode_threads:
        Threads decoding JPEG/PNG/WebP frames, shared by all sessions.

    Files on the server's disk:

    allowed_dirs:
        Directories (``streamvlm serve --allow-dir DIR``, repeatable) from which a chat
        completion's ``video_url`` may name a video by ``file://`` URL or absolute path.
        Resolved to absolute real paths when the settings are made (each must be an
        existing directory, else ``ConfigError``). A named file is read only if its real
        path (symlinks followed, ``..`` collapsed) lies inside one of them and is a
        regular file. Empty (the default): the server reads no file a client names.

    Several replicas:

    cluster:
        ``ClusterSettings`` when this server is one replica of a cluster (``streamvlm
        serve --ray``): sessions are named by their clients, leased in the session
        directory and checkpointed to the shared store, so any replica can resume them.
        ``None``: a single server, its sessions its own.
    """

    api_key: str | None = None
    max_sessions: int = 16
    idle_timeout_s: float | None = 900.0
    max_window: int = 256
    max_chunk_frames: int = 64
    max_queue_frames: int = 256
    max_device_bytes: int = 1 << 30
    max_host_bytes: int = 4 << 30
    max_system_prompt_chars: int = 4000
    max_frame_bytes: int = 4 << 20
    max_frame_side: int = 4096
    max_frame_pixels: int = 3840 * 2160
    max_fps: float = 30.0
    max_text_bytes: int = 64 << 10
    max_message_bytes: int = 8 << 20
    max_question_chars: int = 2000
    max_new_tokens: int = 512
    max_pending_questions: int = 8
    max_video_bytes: int = 32 << 20
    max_video_seconds: float = 600.0
    max_video_frames: int = 256
    stream_keepalive_s: float = 1.0
    decode_threads: int = 4
    allowed_dirs: tuple[str, ...] = ()
    cluster: ClusterSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_dirs", _resolve_dirs(self.allowed_dirs))
        if self.idle_timeout_s == 0:  # "never", as --idle-timeout 0 says
            object.__setattr__(self, "idle_timeout_s", None)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("api_key", "idle_timeout_s", "allowed_dirs", "cluster") or value is None:
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"server setting {f.name} must be a positive number, got {value!r}")
        if self.idle_timeout_s is not None and not 0 < self.idle_timeout_s < math.inf:
            raise ConfigError(
                f"idle_timeout_s must be positive seconds, or 0 or None for never, got {self.idle_timeout_s}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; unset STREAMVLM_API_KEY or give it a value")
        if self.max_message_bytes < max(self.max_frame_bytes + HEADER_SIZE, self.max_text_bytes):
            raise ConfigError(
                f"max_message_bytes ({self.max_message_bytes}) must be at least max_frame_bytes + "
                f"{HEADER_SIZE} and max_text_bytes, so that too large frames get an error, not a closed socket"
            )

    @classmethod
    def from_env(cls, **overrides) -> ServerSettings:
        """Defaults, the API key from ``STREAMVLM_API_KEY`` (empty means none), then ``overrides``."""
        settings = cls(api_key=os.environ.get(API_KEY_ENV) or None)
        return replace(settings, **overrides) if overrides else settings


def _resolve_dirs(dirs) -> tuple[str, ...]:
    """``dirs`` as absolute real paths (symlinks resolved), each checked to be a directory."""
    if isinstance(dirs, (str, bytes, os.PathLike)):
        raise ConfigError("allowed_dirs must be a sequence of directories, not one path")
    resolved: list[str] = []
    for d in dirs:
        try:
            real = os.path.realpath(os.fspath(d))
        except (TypeError, ValueError):
            raise ConfigError(f"--allow-dir must name a directory, got {d!r}") from None
        if not isinstance(real, str) or not os.path.isdir(real):
            raise ConfigError(f"--allow-dir {d}: not an existing directory")
        if real not in resolved:
            resolved.append(real)
    return tuple(resolved)
