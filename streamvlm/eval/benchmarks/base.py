"""What every public benchmark adapter provides, and the records they exchange.

A benchmark adapter (one module per benchmark) turns the benchmark's official annotation
files into ``BenchQuestion`` s, words each question as the official code prompts it, and
scores responses with the official rules. Running a model (``driver.py``) is kept apart from
scoring (``Benchmark.score``), so predictions written once can be scored again, and a
chance baseline (``Benchmark.baseline_response``) can check a harness end to end without a
model.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import ConfigError

# kinds of question, as they are scored
CHOICE = "choice"  # multiple choice: the answer is a letter (A, B, ...)
YESNO = "yesno"  # a yes/no probe (OVO-Bench forward tasks)
COUNT = "count"  # a count (OVO-Bench REC)
OPEN = "open"  # open-ended, judged by an LLM (RVS)
KINDS = (CHOICE, YESNO, COUNT, OPEN)


class AnnotationError(ConfigError):
    """An annotation or predictions file is not in the format its benchmark publishes."""


@dataclass(frozen=True)
class BenchQuestion:
    """One question of a benchmark, as the causal driver asks it.

    Attributes:
        id: unique within the benchmark file (the official id, plus ``/<probe>`` where one
            official item is asked several times, e.g. OVO-Bench forward tasks).
        video: the video's path relative to the benchmark's data directory, as the
            annotations name it.
        ask_time: seconds into the video at which the question is asked: the answer may see
            frames up to this time only. ``None``: after the whole video (offline benchmarks).
        question: the question text, without options.
        options: the choices' texts in order, without their letters ("A. " is stripped);
            empty for yes/no, count and open questions.
        answer: the official ground truth: a letter for ``choice``, "Yes"/"No" for
            ``yesno``, a number for ``count``, free text for ``open``.
        task: the official task name, the breakdown key of the score.
        kind: how the answer is scored: one of ``KINDS``.
        context_start: earliest stream time the answer may see (0: the whole history;
            StreamingBench's official 60-s setting asks with ``ask_time - 60``).
        extra: benchmark-specific fields the scorer needs (category, duration, probe
            index, ...), JSON-serialisable.
    """

    id: str
    video: str
    ask_time: float | None
    question: str
    options: tuple[str, ...] = ()
    answer: str = ""
    task: str = ""
    kind: str = CHOICE
    context_start: float = 0.0
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"question {self.id}: kind {self.kind!r} is not one of {KINDS}")


@dataclass
class Prediction:
    """One answered question, one line of a predictions file (JSON Lines).

    ``response`` is the model's raw text; scoring parses it. ``blocks`` are the
    ``[t_start, t_end]`` stream times of the memory blocks the answer attended to and
    ``latest_frame_t`` the time of the latest frame the session had seen: both at most the
    question's ``ask_time``, which is what makes a run causal.
    """

    id: str
    response: str
    video: str = ""
    ask_time: float | None = None
    prompt: str = ""
    latest_frame_t: float | None = None
    blocks: list[list[float]] = field(default_factory=list)
    ttft_s: float | None = None
    total_s: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def read_predictions(path: str | Path) -> dict[str, str]:
    """``{question id: response}`` from a predictions file (JSON Lines of ``Prediction``).

    A later line for the same id replaces an earlier one (a resumed run that re-asked it).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(
            f"predictions file {path} does not exist; run `streamvlm eval BENCH ... --out {path}`"
        )
    responses: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            responses[str(record["id"])] = str(record["response"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise AnnotationError(
                f"{path}:{number}: not a prediction line ({exc}); each line must be a JSON object "
                'with "id" and "response"'
            ) from None
    return responses


def load_json(path: str | Path):
    """A JSON annotation file, with a one-line error naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; pass the benchmark's official file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(
            f"{path} is not JSON ({exc}); pass the benchmark's official annotation file"
        ) from None


def letter(index: int) -> str:
    """``0 -> "A"``, ``1 -> "B"``, ..."""
    return chr(ord("A") + index)


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


class Benchmark(ABC):
    """A public benchmark: its official files in, its official metric out.

    Subclasses set ``name`` (the CLI name, registered by ``benchmarks.BENCHMARKS``),
    ``metric_name`` (what ``score()["metric"]`` is) and ``default_fps`` (the sampling the
    published numbers use, when the paper states one).
    """

    name: str = ""
    metric_name: str = "accuracy"
    default_fps: float = 1.0
    # where the official annotation files live inside the benchmark's data directory,
    # relative to it (the loader's default for `--data DIR`)
    annotation_files: tuple[str, ...] = ()

    @abstractmethod
    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        """Every question of the official annotation files ``annotations``, in file order.

        Raises ``AnnotationError`` naming the file and the first field that is not in the
        official format.
        """

    @abstractmethod
    def prompt(self, question: BenchQuestion) -> str:
        """The text the model is asked, worded as the benchmark's official code words it."""

    @abstractmethod
    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        """The official metric over ``questions`` given ``{id: raw response}``.

        Returns a JSON-serialisable dict with ``metric`` (a float in [0, 100] unless
        ``metric_name`` says otherwise), ``metric_name``, ``questions`` (how many were
        scored), ``missing`` (questions without a response, scored as wrong) and the
        benchmark's official breakdown (per task, per category, ...).
        """

    def baseline_response(self, question: BenchQuestion) -> str:
        """The constant chance baseline: the first option (A) for multiple choice, "No"
        for a yes/no probe, 0 for a count."""
        if question.kind == CHOICE:
            return "A"
        if question.kind == YESNO:
            return "No"
        if question.kind == COUNT:
            return "0"
        raise AnnotationError(
            f"{self.name}: question {question.id} is open-ended; the constant baseline covers "
            "choice, yes/no and count questions only"
        )

    def video_path(self, data_dir: str | Path, question: BenchQuestion) -> Path:
        """Where ``question``'s video is under the data directory (override where the
        benchmark's layout differs from the annotations' names)."""
        return Path(data_dir) / question.video

    def default_annotations(self, data_dir: str | Path) -> list[Path]:
        """The official annotation files inside ``data_dir`` (those that exist)."""
        found = [Path(data_dir) / name for name in self.annotation_files if (Path(data_dir) / name).is_file()]
        if not found:
            raise AnnotationError(
                f"{self.name}: none of {', '.join(self.annotation_files)} in {data_dir}; "
                "pass --annotations FILE"
            )
        return found
