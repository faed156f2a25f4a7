"""The causal driver: stream each video through a session and ask its questions in time order.

What makes it causal: a question asked at ``t`` is answered before the first sampled frame
later than ``t`` reaches the session, so no frame after ``t`` can be in its context; each
prediction records the latest frame time the session had seen and the blocks the answer
attended to, so a run can be audited afterwards. One session per video answers all of that
video's questions (the point of streaming memory). A question may start later: at its own
``context_start`` (the probes of a StreamingBench proactive item start at its time stamp),
or with ``context_seconds`` (StreamingBench's official 60-s setting) at ``ask_time -
context_seconds``; questions that start at the same frame share a session, the others get a
fresh one fed only the frames from their start on. Offline questions (``ask_time`` None) are
asked after the whole video.

Predictions are appended to a JSON Lines file as they are made: a run stopped half-way
resumes by skipping the ids already in it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from .base import Benchmark, BenchQuestion, Prediction, read_predictions

# stream times are float seconds: a frame stamped at the ask time belongs to the question
TIME_EPS = 1e-6


@dataclass(frozen=True)
class DriverOptions:
    """How questions are run: ``fps`` sampling, answer length, optional context window."""

    fps: float = 1.0
    max_new_tokens: int = 64
    context_seconds: float | None = None  # None: the whole history up to the ask time
    limit: int | None = None  # ask at most this many (new) questions: a quick try

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"--fps must be > 0, got {self.fps}")
        if self.context_seconds is not None and not self.context_seconds > 0:
            raise ConfigError(f"--context-seconds must be > 0, got {self.context_seconds}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class SessionPlan:
    """One session: ``video``'s frames from ``start`` seconds on, ``questions`` in ask order
    (offline ones last)."""

    video: str
    start: float
    questions: tuple[BenchQuestion, ...]


def _ask_order(q: BenchQuestion) -> tuple[bool, float]:
    return (q.ask_time is None, q.ask_time if q.ask_time is not None else 0.0)


def plan_sessions(
    questions: Iterable[BenchQuestion], context_seconds: float | None = None
) -> list[SessionPlan]:
    """The sessions that answer ``questions``: one per video and first frame time, its
    questions sorted by ask time. A question's first frame is its ``context_start`` (0: the
    whole history) or, with ``context_seconds``, ``ask_time - context_seconds`` if later; so
    without a window all of a video's questions share one session, and questions that share
    a start (e.g. the probes of one StreamingBench proactive item) share theirs."""
    groups: dict[tuple[str, float], list[BenchQuestion]] = {}
    for q in questions:
        start = q.context_start
        if context_seconds is not None and q.ask_time is not None:
            start = max(start, q.ask_time - context_seconds)
        groups.setdefault((q.video, max(0.0, start)), []).append(q)
    return [
        SessionPlan(video, start, tuple(sorted(qs, key=_ask_order)))
        for (video, start), qs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1]))
    ]


def answered_ids(path: str | Path) -> set[str]:
    """Question ids already in the predictions file at ``path`` (none if it does not exist)."""
    return set(read_predictions(path)) if Path(path).exists() else set()


def missing_videos(bench: Benchmark, data_dir: str | Path, questions: Sequence[BenchQuestion]) -> list[Path]:
    """The videos ``questions`` need that are not files under ``data_dir``."""
    paths = {bench.video_path(data_dir, q) for q in questions}
    return sorted(p for p in paths if not p.is_file())


@dataclass
class RunSummary:
    """What a run did: questions answered now, skipped as already answered, sessions opened."""

    answered: int = 0
    already: int = 0
    sessions: int = 0
    frames: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def run_benchmark(
    bench: Benchmark,
    questions: Sequence[BenchQuestion],
    data_dir: str | Path,
    engine,
    out: str | Path,
    options: DriverOptions = DriverOptions(),
    memory=None,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Answer ``questions`` causally with ``engine`` sessions (``memory``: their
    ``MemoryConfig``; None: what the model recommends) and append a ``Prediction`` per
    question to ``out``, skipping ids already there. ``progress(n)`` is called after each
    answer with the number answered so far in this run."""
    summary = RunSummary()
    done = answered_ids(out)
    todo = [q for q in questions if q.id not in done]
    summary.already = len(questions) - len(todo)
    if options.limit is not None:
        todo = todo[: options.limit]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as sink:

        def record(prediction: Prediction) -> None:
            sink.write(prediction.to_json() + "\n")
            sink.flush()  # a stopped run keeps every answer made so far
            summary.answered += 1
            if progress is not None:
                progress(summary.answered)

        for plan in plan_sessions(todo, options.context_seconds):
            summary.frames += _run_session(bench, plan, data_dir, engine, memory, options, record)
            summary.sessions += 1
    return summary


def _run_session(bench, plan: SessionPlan, data_dir, engine, memory, options, record) -> int:
    from ...ingest import FileSource, Sampler

    session = engine.new_session(memory=memory if memory is not None else engine.memory())
    pending = list(plan.questions)
    frames = 0
    try:
        for frame in Sampler(options.fps).sample(FileSource(bench.video_path(data_dir, plan.questions[0]))):
            if frame.t < plan.start - TIME_EPS:
                continue
            # a question is answered before the first frame later than its time arrives
            while pending and pending[0].ask_time is not None and frame.t > pending[0].ask_time + TIME_EPS:
                record(_ask(bench, session, pending.pop(0), options))
            if not pending:
                break  # no question left needs later frames: stop decoding
            session.add_frame(frame.rgb, frame.t)
            frames += 1
        for q in pending:  # offline questions, and those asked after the video's last frame
            record(_ask(bench, session, q, options))
    finally:
        session.close()
    return frames


def _ask(bench: Benchmark, session, q: BenchQuestion, options: DriverOptions) -> Prediction:
    prompt = bench.prompt(q)
    answer = session.ask(prompt, max_new_tokens=options.max_new_tokens)
    blocks = [[b.t_start, b.t_end] for b in answer.blocks]
    latest = answer.asked_at if session.state.frames_seen else None
    if q.ask_time is not None and latest is not None and latest > q.ask_time + TIME_EPS:
        # cannot happen by construction; refuse to write a non-causal prediction if it ever does
        raise RuntimeError(f"question {q.id}: frame at {latest}s reached a question asked at {q.ask_time}s")
    return Prediction(
        id=q.id,
        response=answer.text.strip(),
        video=q.video,
        ask_time=q.ask_time,
        prompt=prompt,
        latest_frame_t=latest,
        blocks=blocks,
        ttft_s=round(answer.timings.ttft_s, 4),
        total_s=round(answer.timings.total_s, 4),
    )


def describe_missing(missing: Sequence[Path], total: int, data_dir) -> str:
    """One line for videos the annotations name that ``data_dir`` lacks."""
    return (
        f"{len(missing)} of {total} videos are missing under {data_dir}, e.g. {missing[0]}; "
        "point --data at the benchmark's video directory, or pass --skip-missing to answer the rest"
    )


def progress_printer(total: int, enabled: bool | None):
    """A tqdm bar over ``total`` questions on stderr (default: when stderr is a terminal)
    and the callback that advances it; ``(None, None)`` when disabled."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="question", file=sys.stderr, dynamic_ncols=True, desc="eval")
    return bar, lambda n: bar.update(n - bar.n)
