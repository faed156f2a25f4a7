"""Text for the demo's panels: the live memory panel and the retrieved-frames captions."""

from __future__ import annotations

from .state import RetrievedFrames

TIERS = ("device", "host", "disk")


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def memory_markdown(stats) -> str:
    """The memory panel for ``SessionStats`` (``None``: no session yet) as Markdown."""
    if stats is None:
        return "**Memory** — no frames yet: start the webcam or play a video."
    kept = stats.visual_tokens_kept / stats.visual_tokens_seen if stats.visual_tokens_seen else 1.0
    lines = [
        "**Memory**",
        "",
        f"- frames seen **{stats.frames_seen}** · encoded {stats.frames_encoded}"
        f" · dropped {stats.frames_dropped} · queued {stats.queue_depth}",
        f"- visual tokens seen {stats.visual_tokens_seen} · kept **{stats.visual_tokens_kept}** ({kept:.0%})",
        f"- blocks **{stats.blocks}** · stream time {stats.stream_time:.1f} s",
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


def retrieved_summary(retrieved: list[RetrievedFrames]) -> str:
    """One line naming the time spans an answer attended, for the chat transcript."""
    if not retrieved:
        return "(answered from the system prompt alone: no frames in memory yet)"
    spans = ", ".join(_span(r) for r in retrieved[:12])
    more = f" and {len(retrieved) - 12} more" if len(retrieved) > 12 else ""
    return f"frames attended: {spans}{more}"


def gallery_items(retrieved: list[RetrievedFrames], limit: int = 24) -> list[tuple]:
    """``(PIL image, caption)`` pairs for a gallery: the remembered frames of each block, capped."""
    items = []
    for r in retrieved:
        for thumb in r.thumbnails:
            items.append((thumb.image(), f"block {r.block} · {thumb.t:.1f} s · {r.tier}"))
    return items[-limit:]  # the newest frames are the ones a live viewer can place


def _span(r: RetrievedFrames) -> str:
    text = f"{r.t_start:.1f} s" if r.t_end - r.t_start < 0.05 else f"{r.t_start:.1f}–{r.t_end:.1f} s"
    return text if r.thumbnails else text + " (no thumbnail kept)"
