"""Per-session limits: the frame-rate bucket and the session options a client may set."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from ..config import MemoryConfig
from ..errors import ConfigError
from .protocol import ProtocolError
from .settings import ServerSettings

# The disk tier takes a directory: the server never touches paths a client names.
SERVER_ONLY_OPTIONS = frozenset({"disk_dir", "disk_bytes", "disk_flush_blocks"})

# Bounds for integer options whose cost grows with them but that have no server setting.
_FIXED_CAPS = {"top_k": 65536, "answer_blocks": 65536, "neighbours": 64, "index_groups": 1024}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
}


class FrameRateLimiter:
    """A token bucket: ``rate`` frames per second on average, bursts of up to ``burst``.

    A burst of one second's frames is allowed so that a client sending at exactly the
    limit, with network jitter, is not dropped.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def allow(self) -> bool:
        """Take one frame's token; False when the session is over its rate."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class SessionOptions:
    """What a client asked for when it created a session (``POST /v1/sessions``)."""

    memory: MemoryConfig
    system_prompt: str | None = None  # None: the model's default one
    # Kept when its client sends ``close``: until deleted or idle for ``idle_timeout_s``.
    # Without it, ``close`` deletes the session and frees its slot.
    persist: bool = False
    # the name the client gave it (a cluster routes by it); None: the server picks one
    session_id: str | None = None

    def open(self, engine, memory: MemoryConfig | None = None, **extra):
        """A new ``Session`` of ``engine`` with these options (``memory`` instead of
        ``self.memory`` when given; ``extra``: more ``new_session`` keywords, e.g. ``mirror``)."""
        if self.system_prompt is not None:
            extra["system_prompt"] = self.system_prompt
        return engine.new_session(memory or self.memory, **extra)


# a session's name when its client gives one: safe in a URL path, a Redis key and a file name
SESSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def session_options(
    body: Any, settings: ServerSettings, build: Callable[..., MemoryConfig] = MemoryConfig
) -> SessionOptions:
    """Check a ``POST /v1/sessions`` body: ``{"memory": {...}, "system_prompt": "...", "persist": true}``.

    ``build`` makes the ``MemoryConfig`` of the options given: the server passes
    ``engine.memory``, so the options a client leaves out are what the model recommends.

    Raises ``ProtocolError`` (400 ``bad_option``) with a one-line reason for anything else.
    """
    if not isinstance(body, dict):
        raise ProtocolError("bad_option", 'the body must be a JSON object, e.g. {"memory": {"window": 16}}')
    unknown = set(body) - {"id", "memory", "system_prompt", "persist"}
    if unknown:
        raise ProtocolError(
            "bad_option", f"unknown field {sorted(unknown)[0][:40]!r}; use id, memory, system_prompt, persist"
        )
    session_id = body.get("id")
    if session_id is not None and not (isinstance(session_id, str) and SESSION_ID.fullmatch(session_id)):
        raise ProtocolError(
            "bad_option",
            f"id must be 1-64 letters, digits, '.', '_' or '-' (not starting with '.'), got {str(session_id)[:40]!r}",
        )
    persist = body.get("persist", False)
    if not isinstance(persist, bool):
        raise ProtocolError("bad_option", f"persist must be true or false, got {str(persist)[:40]!r}")
    prompt = body.get("system_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > settings.max_system_prompt_chars):
        raise ProtocolError(
            "bad_option",
            f"system_prompt must be text of at most {settings.max_system_prompt_chars} characters",
        )
    memory = body.get("memory", {})
    if not isinstance(memory, dict):
        raise ProtocolError("bad_option", '"memory" must be a JSON object of MemoryConfig options')
    return SessionOptions(memory_config(memory, settings, build), prompt, persist, session_id)


def memory_config(
    options: dict[str, Any], settings: ServerSettings, build: Callable[..., MemoryConfig] = MemoryConfig
) -> MemoryConfig:
    """A ``MemoryConfig`` (made by ``build``) from client options, type-checked and within the server's caps."""
    known = {f.name: f for f in fields(MemoryConfig)}
    caps = {
        "window": settings.max_window,
        "answer_window": settings.max_window,
        "chunk_frames": settings.max_chunk_frames,
        "queue_frames": settings.max_queue_frames,
        "device_bytes": settings.max_device_bytes,
        "host_bytes": settings.max_host_bytes,
        "max_question_chars": settings.max_question_chars,
        **_FIXED_CAPS,
    }
    for name, value in options.items():
        if name in SERVER_ONLY_OPTIONS:
            raise ProtocolError(
                "bad_option", f"option {name!r} names a place on the server's disk; clients cannot set it"
            )
        if name not in known:
            raise ProtocolError("bad_option", f"unknown memory option {name[:40]!r} (see docs/memory.md)")
        _check_type(name, value, str(known[name].type))
        if name in caps and value is not None and value > caps[name]:
            raise ProtocolError(
                "bad_option", f"memory option {name} is at most {caps[name]} on this server, got {value}"
            )
    try:
        config = build(**options)
    except ConfigError as e:
        raise ProtocolError("bad_option", str(e)) from None
    # the server's question limit applies even when the client leaves the option out
    if config.max_question_chars > settings.max_question_chars:
        config = build(**{**options, "max_question_chars": settings.max_question_chars})
    return config


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Accept ``value`` only if it is one of the simple JSON types the field's annotation names."""
    allowed: tuple[type, ...] = ()
    for part in annotation.split("|"):
        allowed += _JSON_TYPES.get(part.strip(), ())
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ProtocolError(
            "bad_option", f"memory option {name} must be {annotation}, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("bad_option", f"memory option {name} must be finite, got {value}")
    if isinstance(value, str) and len(value) > 64:  # every valid choice is a short name
        raise ProtocolError(
            "bad_option", f"memory option {name} is {len(value)} characters; it takes a short name"
        )
