"""The demo's words: times as a person reads them, the model line, the memory panels and
the note under each answer.

The main surface speaks of frames, moments and memory; the words of the runtime
(blocks, tokens, tiers) appear only in the advanced memory details.
"""

from __future__ import annotations

import math

from ..models.catalog import model_card
from .state import RetrievedFrames

TIERS = ("device", "host", "disk")

# Where an attended moment's memory came from, in a person's words ("pending": frames the
# session holds but has not stored yet, attended by a question that covers them).
_FROM = {
    "device": "from memory (device)",
    "host": "from memory (RAM)",
    "disk": "from memory (disk)",
    "pending": "just seen (not stored yet)",
}
_TIER_WORDS = {"device": "on the device", "host": "in RAM", "disk": "on disk"}
# spans listed in the chat transcript under an answer; the rest are counted (all are shown below the chat)
_SPANS_IN_TRANSCRIPT = 12


def clock(t: float) -> str:
    """Stream seconds as a video player shows them: ``75.4`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    s = max(0, math.floor(t))
    hours, rest = divmod(s, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def span_clock(t_start: float, t_end: float) -> str:
    """``'0:12–0:14'``, or ``'0:12'`` when both ends fall in the same second."""
    start, end = clock(t_start), clock(t_end)
    return start if start == end else f"{start}–{end}"


def where_from(tier: str) -> str:
    """``'disk'`` -> ``'from memory (disk)'``."""
    return _FROM.get(tier, f"from memory ({tier})")


def moment_caption(r: RetrievedFrames) -> str:
    """The caption of one attended moment: ``'0:12–0:14, from memory (disk)'``."""
    return f"{span_clock(r.t_start, r.t_end)}, {where_from(r.tier)}"


def model_markdown(name: str) -> str:
    """The model line: its name and, for a model streamvlm made, what it can answer."""
    card = model_card(name)
    line = f"**Model:** `{name}`"
    return f"{line}. It {card.can_answer}." if card.can_answer else line


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def memory_markdown(stats) -> str:
    """The memory panel for ``SessionStats`` (``None``: no session yet), in plain words."""
    if stats is None:
        return "**What the model remembers**: nothing yet. Start the webcam or play a video."
    lines = [
        "**What the model remembers**",
        "",
        f"- **{stats.frames_seen}** frames watched, up to {clock(stats.stream_time)}",
    ]
    if stats.queue_depth:
        lines.append(f"- {stats.queue_depth} more frames waiting: the model is catching up")
    if stats.frames_dropped:
        lines.append(f"- {stats.frames_dropped} frames skipped: they came faster than the model could watch")
    held = [
        f"{human_bytes(stats.bytes_per_tier[tier])} {_TIER_WORDS[tier]}"
        for tier in TIERS
        if stats.bytes_per_tier.get(tier)
    ]
    lines.append(f"- memory in use: {' · '.join(held) if held else 'none yet'}")
    return "\n".join(lines)


def memory_details_markdown(stats) -> str:
    """The advanced memory panel: the session's blocks, tokens and tiers (``Session.stats()``)."""
    if stats is None:
        return "No session yet."
    kept = stats.visual_tokens_kept / stats.visual_tokens_seen if stats.visual_tokens_seen else 1.0
    lines = [
        "Frames are encoded in chunks; each chunk's keys and values (KV) become one *block*, kept "
        "in a memory *tier*: the device, host RAM, or disk.",
        "",
        f"- frames seen {stats.frames_seen} · encoded {stats.frames_encoded}"
        f" · dropped {stats.frames_dropped} · queued {stats.queue_depth}",
        f"- visual tokens seen {stats.visual_tokens_seen} · kept {stats.visual_tokens_kept} ({kept:.0%})",
        f"- blocks {stats.blocks} · stream time {stats.stream_time:.1f} s"
        f" · a question holds at most {stats.answer_tokens} tokens",
        "",
        "| tier | bytes | KV bits / element |",
        "|---|---|---|",
    ]
    for tier in TIERS:
        if tier not in stats.bytes_per_tier and tier not in stats.kv_bits_per_element:
            continue
        bits = stats.kv_bits_per_element.get(tier)
        shown = "–" if bits is None else f"{bits:.2f}"
        lines.append(f"| {tier} | {human_bytes(stats.bytes_per_tier.get(tier, 0))} | {shown} |")
    return "\n".join(lines)


def waiting_note(frames: int) -> str:
    """What the chat shows while a question waits for the frames sent before it to be watched."""
    return f"*Watching the {frames} frame{'s' if frames != 1 else ''} sent before your question first…*"


def answer_note(answer, retrieved: list[RetrievedFrames]) -> str:
    """The line under an answer in the chat: what it covered and the moments it looked at.

    It stays in the transcript, so every answer keeps its own moments, not only the last.
    """
    if not retrieved:
        return "(answered without any video: nothing was in memory yet)"
    spans = ", ".join(span_clock(r.t_start, r.t_end) for r in retrieved[:_SPANS_IN_TRANSCRIPT])
    more = len(retrieved) - _SPANS_IN_TRANSCRIPT
    listed = f"{spans} and {more} more" if more > 0 else spans
    moments = "moment" if len(retrieved) == 1 else "moments"
    note = f"Answered over the video up to {clock(answer.asked_at)}; looked at {len(retrieved)} {moments}: {listed}"
    if answer.left_out:
        note += f" (not the other {answer.left_out}: it answers over the moments that best match the question and the newest ones)"
    return note
