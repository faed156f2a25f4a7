"""Server metrics in the Prometheus text exposition format (version 0.0.4).

Counters are kept server-wide, not per session: session ids would be unbounded label
values, and whoever may scrape the server need not learn them. Counts that live in the
sessions (frames encoded, dropped by the queue, bytes held) are summed over the open
sessions plus what closed sessions had reached (``retire``), so counters never go back.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative-bucket histogram of seconds."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        out += [f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]
        return out


@dataclass
class SessionSample:
    """What one open session holds right now (read under the device lock)."""

    frames_encoded: int
    frames_dropped_queue: int
    queue_depth: int
    bytes_per_tier: dict[str, int]


@dataclass
class Metrics:
    """Server-wide counters; the app updates them on the event loop thread."""

    frames_received: int = 0
    frames_dropped_rate: int = 0
    frames_rejected: Counter = field(default_factory=Counter)  # by error code
    errors: Counter = field(default_factory=Counter)  # every error message sent, by code
    sessions_created: int = 0
    sessions_resumed: int = 0  # in a cluster: taken over from the shared store (resume on miss)
    sessions_ended: Counter = field(default_factory=Counter)  # by reason: see SessionRegistry
    answers: int = 0
    retired_encoded: int = 0
    retired_dropped_queue: int = 0
    answer_latency: Histogram = field(default_factory=Histogram)
    answer_ttft: Histogram = field(default_factory=Histogram)

    def observe_answer(self, latency_s: float, ttft_s: float) -> None:
        """Count a finished answer: arrival to last token, and arrival to first token."""
        self.answers += 1
        self.answer_latency.observe(latency_s)
        self.answer_ttft.observe(ttft_s)

    def retire(self, sample: SessionSample) -> None:
        """Keep the counts of a session that is closing (or being reset)."""
        self.retired_encoded += sample.frames_encoded
        self.retired_dropped_queue += sample.frames_dropped_queue

    def render(self, sessions: list[SessionSample], connections: int) -> str:
        """The exposition text, with the open sessions' current samples."""
        tiers: Counter = Counter()
        for s in sessions:
            tiers.update(s.bytes_per_tier)
        lines: list[str] = []
        add = _adder(lines)
        add("streamvlm_sessions", "gauge", "Sessions open.", [("", len(sessions))])
        add("streamvlm_sessions_created_total", "counter", "Sessions created.", [("", self.sessions_created)])
        add(
            "streamvlm_sessions_resumed_total",
            "counter",
            "Sessions this replica resumed from the cluster's shared store.",
            [("", self.sessions_resumed)],
        )
        add(
            "streamvlm_sessions_ended_total",
            "counter",
            "Sessions deleted, by reason: close, delete, operator, idle, shutdown.",
            [(f'reason="{reason}"', n) for reason, n in sorted(self.sessions_ended.items())],
        )
        add(
            "streamvlm_stream_connections", "gauge", "Websocket stream connections open.", [("", connections)]
        )
        add(
            "streamvlm_frames_received_total",
            "counter",
            "Frame messages received.",
            [("", self.frames_received)],
        )
        encoded = self.retired_encoded + sum(s.frames_encoded for s in sessions)
        add("streamvlm_frames_encoded_total", "counter", "Frames encoded into memory.", [("", encoded)])
        queue = self.retired_dropped_queue + sum(s.frames_dropped_queue for s in sessions)
        add(
            "streamvlm_frames_dropped_total",
            "counter",
            "Frames dropped: over the session's frame rate, or by a full encoder queue.",
            [('reason="rate"', self.frames_dropped_rate), ('reason="queue"', queue)],
        )
        add(
            "streamvlm_frames_rejected_total",
            "counter",
            "Frame messages refused as invalid, by error code.",
            [(f'code="{code}"', n) for code, n in sorted(self.frames_rejected.items())],
        )
        add(
            "streamvlm_queue_depth",
            "gauge",
            "Frames waiting for encoder threads, all sessions.",
            [("", sum(s.queue_depth for s in sessions))],
        )
        add(
            "streamvlm_memory_bytes",
            "gauge",
            "Bytes of KV memory held by open sessions, by tier.",
            [(f'tier="{t}"', n) for t, n in sorted((tiers or Counter(device=0, host=0, disk=0)).items())],
        )
        add("streamvlm_answers_total", "counter", "Answers completed.", [("", self.answers)])
        add(
            "streamvlm_errors_total",
            "counter",
            "Error messages sent to websocket clients, by code.",
            [(f'code="{code}"', n) for code, n in sorted(self.errors.items())],
        )
        lines += self.answer_latency.lines(
            "streamvlm_answer_latency_seconds", "From a question's arrival to its last token."
        )
        lines += self.answer_ttft.lines(
            "streamvlm_answer_ttft_seconds", "From a question's arrival to its first token."
        )
        return "\n".join(lines) + "\n"


def _adder(lines: list[str]):
    def add(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        for labels, value in samples:
            lines.append(f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}")

    return add


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
