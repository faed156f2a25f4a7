"""The websocket wire protocol: frame header, control messages, server messages.

Everything here is plain Python (no FastAPI, no torch) so that clients and tests can
build and parse messages with it. ``docs/protocol.md`` is the reference; the
constants and field names below are the ones it documents.

Client -> server:

- a **binary** message is one frame: a 12-byte header (``FRAME_HEADER``: the magic
  ``b"SVF1"`` then the client's timestamp in seconds as a little-endian float64)
  followed by the encoded image (JPEG, PNG or WebP);
- a **text** message is one JSON object with a ``type``: ``question``, ``reset`` or
  ``close``.

Server -> client (text, JSON): ``ack``, ``answer.delta``, ``answer.done``, ``error``.
Every binary message gets exactly one reply: an ``ack`` (``"cause": "frame"``) or an
``error``; an ``ack`` with ``"cause": "encoded"`` also says when encoding has caught up.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from ..config import EVERY_BLOCK
from ..errors import StreamVLMError

FRAME_MAGIC = b"SVF1"
FRAME_HEADER = struct.Struct("<4sd")  # magic, timestamp (s); '<' means no padding: 12 bytes
HEADER_SIZE = FRAME_HEADER.size

MAX_QUESTION_ID_CHARS = 64
MAX_ANSWER_WINDOW = 65536  # frames; what a question's answer window may ask for

# Options a question may carry, with the JSON types each accepts (bool is not a number here).
# The ranges of since / until against the stream are checked by the session
# (runtime/questions.py check_time_range), the one place every front end shares.
QUESTION_OPTIONS: dict[str, tuple[type, ...]] = {
    "wait": (bool,),
    "max_new_tokens": (int,),
    "top_k": (int,),  # or "all" (EVERY_BLOCK): every block that fits
    "answer_window": (int,),
    "since": (int, float),
    "until": (int, float),
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
}


class ProtocolError(StreamVLMError):
    """Bad input from a client: a stable ``code``, a one-line message and an HTTP status.

    On the websocket it becomes an ``error`` message (``status`` unused); over REST a
    JSON body ``{"error": {"code": ..., "message": ...}}`` with that status.
    """

    def __init__(self, code: str, message: str, *, status: int = 400, **context: Any):
        super().__init__(" ".join(message.split()))
        self.code = code
        self.status = status
        self.context = context  # e.g. the question id or frame time the error is about

    @property
    def message(self) -> str:
        return str(self)


# ----------------------------------------------------------------------------- frames


def pack_frame(image: bytes, t: float) -> bytes:
    """A binary frame message: header with timestamp ``t`` (seconds), then the encoded image."""
    return FRAME_HEADER.pack(FRAME_MAGIC, float(t)) + bytes(image)


def unpack_frame(message: bytes) -> tuple[float, bytes]:
    """Split a binary frame message into ``(t, image bytes)``; raises ``ProtocolError('bad_header')``."""
    if len(message) < HEADER_SIZE or message[:4] != FRAME_MAGIC:
        raise ProtocolError(
            "bad_header",
            f"a binary message must start with the {HEADER_SIZE}-byte frame header "
            f"(magic {FRAME_MAGIC.decode()} + little-endian float64 seconds), then the image",
        )
    _, t = FRAME_HEADER.unpack_from(message)
    if not math.isfinite(t):
        raise ProtocolError("bad_timestamp", f"frame time must be a finite number of seconds, got {t}")
    return t, message[HEADER_SIZE:]


# ------------------------------------------------------------------- control messages


@dataclass(frozen=True)
class Question:
    """``{"type": "question", "id": ..., "text": ..., "options": {...}}``."""

    id: str
    text: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reset:
    """``{"type": "reset"}``: forget everything seen; start a fresh memory with the same options."""


@dataclass(frozen=True)
class Close:
    """``{"type": "close"}``: finish answers and frames, send a final ``ack``, close the socket."""


ControlMessage = Question | Reset | Close


def parse_control(
    text: str, *, max_bytes: int, max_question_chars: int, max_new_tokens: int, next_id: str
) -> ControlMessage:
    """Parse and check one text message; raises ``ProtocolError`` with the documented code.

    ``next_id`` names a question that comes without an ``id``.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(
            "message_too_large", f"text message is {size} bytes, over the limit of {max_bytes}"
        )
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested arrays
        raise ProtocolError("bad_json", f"text message is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ProtocolError(
            "bad_message", 'a text message must be a JSON object with a "type", e.g. {"type": "close"}'
        )
    kind = doc["type"]
    if kind == "question":
        return _parse_question(doc, max_question_chars, max_new_tokens, next_id)
    if kind == "reset":
        return Reset()
    if kind == "close":
        return Close()
    raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}; use question, reset or close")


def _parse_question(doc: dict, max_chars: int, max_new_tokens: int, next_id: str) -> Question:
    qid = doc.get("id", next_id)
    if (
        isinstance(qid, bool)
        or not isinstance(qid, (str, int))
        or not 0 < len(str(qid)) <= MAX_QUESTION_ID_CHARS
    ):
        raise ProtocolError(
            "bad_message",
            f"question id must be a string of 1-{MAX_QUESTION_ID_CHARS} characters or an integer",
        )
    qid = str(qid)
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("bad_question", 'a question needs a non-empty "text"', id=qid)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800") is valid JSON but not text
        raise ProtocolError("bad_question", "question text is not valid Unicode", id=qid) from None
    if len(text.strip()) > max_chars:
        raise ProtocolError(
            "question_too_long",
            f"question is {len(text.strip())} characters, over the limit of {max_chars}",
            id=qid,
        )
    options = doc.get("options", {})
    if not isinstance(options, dict):
        raise ProtocolError("bad_option", '"options" must be a JSON object', id=qid)
    for name, value in options.items():
        check_question_option(name, value, max_new_tokens, id=qid)
    return Question(id=qid, text=text, options=dict(options))


def check_question_option(name: str, value: Any, max_new_tokens: int, **context: Any) -> None:
    """Raise ``ProtocolError('bad_option')`` unless ``value`` is a valid ``name`` option of a question."""

    def bad(why: str) -> ProtocolError:
        return ProtocolError("bad_option", f"option {name[:40]!r} {why}", **context)

    types = QUESTION_OPTIONS.get(name)
    if types is None:
        raise bad(f"is not known; use {', '.join(QUESTION_OPTIONS)}")
    if types == (bool,):
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {type(value).__name__}")
        return
    if name == "top_k" and value == EVERY_BLOCK:
        return
    if isinstance(value, bool) or not isinstance(value, types):
        kind = "an integer" if types == (int,) else "a number"
        raise bad(
            f"must be {kind}{f' or {EVERY_BLOCK!r}' if name == 'top_k' else ''}, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"must be finite, got {value}")
    if name == "max_new_tokens" and not 1 <= value <= max_new_tokens:
        raise bad(f"must be between 1 and {max_new_tokens} on this server, got {value}")
    if name == "top_k" and value < 1:
        raise bad(f"must be >= 1 or {EVERY_BLOCK!r}, got {value}")
    if name == "answer_window" and not 0 <= value <= MAX_ANSWER_WINDOW:
        raise bad(f"must be between 0 and {MAX_ANSWER_WINDOW} frames, got {value}")
    if name == "temperature" and not 0 <= value <= 100:
        raise bad(f"must be between 0 and 100, got {value}")
    if name == "top_p" and not 0 < value <= 1:
        raise bad(f"must be in (0, 1], got {value}")
    if name == "seed" and not 0 <= value < 2**63:
        raise bad(f"must be between 0 and 2**63 - 1, got {value}")


# -------------------------------------------------------------------- server messages


def error_message(code: str, message: str, **context: Any) -> dict[str, Any]:
    """``{"type": "error", "code", "message", ...}``; context is e.g. the question ``id`` or frame ``t``."""
    return {"type": "error", "code": code, "message": message, **context}


def delta_message(qid: str, text: str) -> dict[str, Any]:
    """``{"type": "answer.delta", "id", "text"}``: the next piece of an answer's text."""
    return {"type": "answer.delta", "id": qid, "text": text}


def answer_fields(answer, latency_s: float) -> dict[str, Any]:
    """What ``answer.done`` reports about an ``Answer``: text, time spans, blocks, timings.

    ``latency_s`` runs from the question's arrival at the server to now: ``queued_s``
    behind earlier questions, ``wait_s`` for the frames before it to be encoded, then
    the answer itself (``total_s``).
    """
    t = answer.timings
    blocks = [
        {"id": b.id, "t_start": b.t_start, "t_end": b.t_end, "tier": b.tier, "tokens": b.tokens}
        for b in answer.blocks
    ]
    return {
        "text": answer.text,
        "asked_at": answer.asked_at,
        "finish_reason": answer.finish_reason,
        "mode": answer.mode,
        "left_out": answer.left_out,
        "context_tokens": answer.context_tokens,
        "context_bytes": answer.context_bytes,
        "frames_dropped": answer.frames_dropped,
        "spans": spans_of(blocks),
        "blocks": blocks,
        "timings": {
            "queued_s": max(0.0, latency_s - t.total_s - t.wait_s),
            "wait_s": t.wait_s,
            "ttft_s": t.ttft_s,
            "prefill_s": t.prefill_s,
            "decode_s": t.decode_s,
            "total_s": t.total_s,
            "latency_s": latency_s,
            "new_tokens": t.new_tokens,
        },
    }


def spans_of(blocks: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Merge attended blocks into time spans: consecutive block ids are one span."""
    spans: list[dict[str, float]] = []
    last_id = None
    for b in sorted(blocks, key=lambda b: b["id"]):
        if spans and last_id is not None and b["id"] == last_id + 1:
            spans[-1]["t_end"] = max(spans[-1]["t_end"], b["t_end"])
        else:
            spans.append({"t_start": b["t_start"], "t_end": b["t_end"]})
        last_id = b["id"]
    return spans
