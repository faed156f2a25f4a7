"""``streamvlm eval streams``: what a user gets on long streams, per question family.

Each seed's world is written as ``streamvlm synth make --seconds S --seed N`` writes it
(an H.264 video and its sidecar of questions), decoded back at 1 fps as ``streamvlm
watch`` reads it, and streamed through a session; every sidecar question is asked when
its time comes, by each configuration:

- ``default``: a session with ``MemoryConfig()`` asked with no options — exactly what
  ``streamvlm watch VIDEO --ask-at T:Q`` does;
- any name of ``eval needle``'s grammar (``lossless``, ``top2-contiguous-w2``, ...),
  on a session with the default ``MemoryConfig`` but ``query_context`` (the README's
  recommended options).

Unlike ``eval needle``, whose questions are about single objects, the sidecar questions
cover all six families, counting and ordering over the whole stream included, so the
report is per family.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..models.bundled import TINY_SYNTH
from .needle import DEFAULT, AnswerConfig, answers_match, question_options


@dataclass
class StreamEvalConfig:
    model: str = TINY_SYNTH
    seconds: float = 1800.0
    seeds: tuple[int, ...] = (0, 1, 2)  # `synth make --seed N`; the model never saw these worlds
    questions: int = 16  # sidecar questions per stream (`synth make --questions`)
    configs: tuple[str, ...] = (DEFAULT, "top1-contiguous-w0", "top1-contiguous-w2", "top2-contiguous-w2")
    # MemoryConfig.query_context and window (None: MemoryConfig's) of the named configurations' sessions
    query_context: str = "sink"
    window: int | None = None
    max_new_tokens: int = 4
    seed: int = 0  # the model's (random models only)
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.seconds < 16:
            raise ConfigError(f"seconds must be >= 16, got {self.seconds}")
        if not self.seeds:
            raise ConfigError("give at least one stream seed")
        if self.questions < 1:
            raise ConfigError(f"questions must be >= 1, got {self.questions}")
        for name in self.configs:
            ac = AnswerConfig.parse(name)  # raises ConfigError for a bad name
            if ac.plain or ac.store not in ((DEFAULT,), (None, None)):
                raise ConfigError(
                    f"{name}: eval streams answers over stored blocks; drop plain and +suffixes"
                )


@dataclass
class StreamOutcome:
    stream: int
    config: str
    family: str
    question: str
    expected: str
    answer: str
    correct: bool
    asked_at: float
    distance: float | None
    blocks_attended: int
    context_tokens: int


@dataclass
class StreamEvalResult:
    config: dict
    outcomes: list[StreamOutcome] = field(default_factory=list)
    stream_s: dict[int, float] = field(default_factory=dict)

    def accuracy(self) -> dict[str, dict[str, dict]]:
        """``{config: {family or "all": {"correct", "questions", "accuracy"}}}``."""
        cells: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        for o in self.outcomes:
            for key in (o.family, "all"):
                cells[o.config][key][0] += o.correct
                cells[o.config][key][1] += 1
        return {
            config: {
                key: {"correct": c, "questions": n, "accuracy": round(c / n, 3)}
                for key, (c, n) in sorted(by.items(), key=lambda kv: (kv[0] == "all", kv[0]))
            }
            for config, by in cells.items()
        }

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "accuracy": self.accuracy(),
            "stream_s": self.stream_s,
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def table(self) -> str:
        """Per family (rows) and configuration (columns): correct/asked."""
        acc = self.accuracy()
        configs = list(acc)
        families = sorted({f for by in acc.values() for f in by if f != "all"}) + ["all"]
        width = max(18, *(len(c) + 2 for c in configs))
        lines = [f"{'family':<16}" + "".join(f"{c:>{width}}" for c in configs)]
        for family in families:
            row = f"{family:<16}"
            for c in configs:
                cell = acc[c].get(family)
                text = f"{cell['correct']}/{cell['questions']} ({cell['accuracy']:.2f})" if cell else "-"
                row += f"{text:>{width}}"
            lines.append(row)
        return "\n".join(lines)


def run_stream_eval(config: StreamEvalConfig, log=print) -> StreamEvalResult:
    """Write, decode and stream each seed's world; ask its sidecar questions with every configuration."""
    from ..runtime.engine import StreamVLM

    engine = StreamVLM.from_pretrained(
        config.model, device=config.device, dtype=config.dtype, seed=config.seed
    )
    result = StreamEvalResult(config=asdict(config))
    for seed in config.seeds:
        _run_stream(engine, config, seed, result)
        log(f"stream seed {seed}: {len([o for o in result.outcomes if o.stream == seed])} answers")
    return result


def session_memory(engine, name: str, config: StreamEvalConfig):
    """The session options of configuration ``name``: what ``watch`` gives without options
    (``engine.memory()``: the model's recommendation over ``MemoryConfig``'s defaults), or,
    for a named configuration, ``MemoryConfig``'s own defaults with ``config.query_context``
    and ``config.window`` (its question options do the rest)."""
    from ..config import MemoryConfig

    if name == DEFAULT:
        return engine.memory()
    window = {"window": config.window} if config.window is not None else {}
    return MemoryConfig(query_context=config.query_context, **window)


def _run_stream(engine, config: StreamEvalConfig, seed: int, result: StreamEvalResult) -> None:
    from ..ingest import FileSource, Sampler
    from ..synth import World
    from ..synth.files import write
    from ..synth.questions import sample_questions

    world = World(seed, config.seconds)
    questions = sample_questions(world, config.questions, [seed, 3])  # as `synth make` draws them
    sessions: dict[tuple, list[str]] = defaultdict(list)
    for name in config.configs:
        sessions[repr(session_memory(engine, name, config))].append(name)
    with tempfile.TemporaryDirectory(prefix="streamvlm-streams-") as tmp:
        video = write(world, Path(tmp) / f"world{seed}.mp4", questions=questions)
        for names in sessions.values():
            session = engine.new_session(memory=session_memory(engine, names[0], config))
            waiting = list(questions)
            started = time.perf_counter()
            for frame in Sampler(1.0).sample(FileSource(video)):
                session.add_frame(frame.rgb, frame.t)
                while waiting and waiting[0].asked_at <= frame.t + 1e-6:
                    q = waiting.pop(0)
                    for name in names:
                        result.outcomes.append(_ask(session, q, name, seed, config))
            for q in waiting:  # asked at the very end
                for name in names:
                    result.outcomes.append(_ask(session, q, name, seed, config))
            result.stream_s[seed] = round(time.perf_counter() - started, 2)
            session.close()


def _ask(session, q, name: str, seed: int, config: StreamEvalConfig) -> StreamOutcome:
    options = question_options(AnswerConfig.parse(name))
    answer = session.ask(q.text, max_new_tokens=config.max_new_tokens, **options)
    text = answer.text.strip()
    return StreamOutcome(
        stream=seed,
        config=name,
        family=q.family,
        question=q.text,
        expected=q.answer,
        answer=text,
        correct=answers_match(text, q.answer),
        asked_at=q.asked_at,
        distance=q.distance,
        blocks_attended=len(answer.blocks),
        context_tokens=answer.context_tokens,
    )
