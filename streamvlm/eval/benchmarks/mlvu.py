"""MLVU (dev): multi-task long-video understanding, asked offline after the whole video.

Official files (github JUNJIE99/MLVU ``data/``; the Hugging Face dataset ``MLVU/MVLU`` ships
the same files under ``MLVU/json/``): one JSON list per task, ``1_plotQA.json`` ...
``9_summary.json``, each item ``{"video", "duration", "question", "candidates", "answer",
"question_type"}`` with the answer given as the candidate's *text*. Tasks 1-7 are multiple
choice and make M-Avg, the mean of the seven task accuracies; tasks 8 (sub-scene
captioning, with ``scoring_points``) and 9 (summary) are generation tasks that the paper
scores with a GPT-4 judge (G-Avg): they are loaded as open questions and reported as not
scored, since no judge is configured here.

Official rules implemented (from JUNJIE99/MLVU
``evaluation/multiple_choice_evaluation/choice_bench.py`` and
``evaluation/models/videollava/choice_bench.py``):

- the ground-truth letter is the position of the *last* candidate equal to the answer text
  (their loop overwrites the index at each match, and the dev files have duplicated
  candidates); an answer that is no candidate gets no letter and can never be matched
  (two needle items are published that way);
- a response is stripped; if it contains ")", the predicted letter is the character just
  before the first ")"; otherwise the whole stripped response must equal the letter;
- each task's accuracy is correct / questions; M-Avg is the mean over the tasks present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import CHOICE, OPEN, AnnotationError, Benchmark, BenchQuestion, letter, load_json, mean

# question_type as published -> the task key of the official scripts' ``data_list``
TASKS = {
    "plotQA": "plotQA",
    "findNeedle": "needle",
    "ego": "ego",
    "count": "count",
    "order": "order",
    "anomaly_reco": "anomaly_reco",
    "topic_reasoning": "topic_reasoning",
    "subPlot": "subPlot",
    "summary": "summary",
}
# the same task keys from the official file names, for items without question_type
FILE_TASKS = {
    "1_plotQA": "plotQA",
    "2_needle": "needle",
    "3_ego": "ego",
    "4_count": "count",
    "5_order": "order",
    "6_anomaly_reco": "anomaly_reco",
    "7_topic_reasoning": "topic_reasoning",
    "8_sub_scene": "subPlot",
    "9_summary": "summary",
}
MULTIPLE_CHOICE_TASKS = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
GENERATION_TASKS = ("subPlot", "summary")

# The official choice_bench.py puts the first line in the conversation's system message,
# the question block and "Only give the best option." in the user turn and opens the
# assistant turn with "Best Option: (" (videollava/choice_bench.py). The adapter interface
# has one text, so the three follow one another, as lmms-eval's mlvu_dev task also does.
CHOICE_SYSTEM = (
    "Carefully watch this video and pay attention to every detail. Based on your observations, "
    "select the best option that accurately addresses the question."
)
CHOICE_SUFFIX = "Only give the best option."
CHOICE_ANSWER_START = "Best Option: ("
# generation_evaluation/open_bench.py: its system message, then the question alone
OPEN_SYSTEM = (
    "Carefully watch this video and pay attention to every detail. Based on your observations, "
    "answer the given questions."
)
NO_LETTER = "@"  # chr(ord("A") - 1): the official letter of an answer that is no candidate


def answer_letter(candidates: Sequence[str], answer: str) -> str:
    """The official ground-truth letter: the last candidate equal to ``answer``."""
    matches = [index for index, candidate in enumerate(candidates) if candidate == answer]
    return letter(matches[-1]) if matches else NO_LETTER


def parse_choice(response: str) -> str:
    """The letter the official ``check_ans`` reads from a response: the character before
    the first ")" when there is one, else the whole (stripped) response."""
    response = response.strip()
    if ")" in response:
        close = response.index(")")
        return response[close - 1 : close] if close else ""
    return response


class MLVU(Benchmark):
    """MLVU dev: M-Avg over its seven multiple-choice tasks (``score``)."""

    name = "mlvu"
    metric_name = "M-Avg"
    # published long-video numbers are at fixed frame counts; 1 fps is the streaming setting
    default_fps = 1.0
    annotation_files = tuple(f"MLVU/json/{stem}.json" for stem in FILE_TASKS)

    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        for path in annotations:
            questions.extend(self._load_file(Path(path)))
        return questions

    def _load_file(self, path: Path) -> list[BenchQuestion]:
        items = load_json(path)
        if not isinstance(items, list):
            raise AnnotationError(f"{path}: expected a JSON list of questions (MLVU's json/N_task.json)")
        questions = []
        for index, item in enumerate(items):
            where = f"{path} item {index}"
            if not isinstance(item, Mapping):
                raise AnnotationError(f"{where}: not a JSON object")
            task = _task(item, path, where)
            video, question, answer = (_text(item, key, where) for key in ("video", "question", "answer"))
            extra = {"duration": _seconds(item.get("duration"), where), "answer_text": answer}
            if "candidates" not in item and task in MULTIPLE_CHOICE_TASKS:
                raise AnnotationError(f"{where}: no 'candidates' field; {task} is a multiple-choice task")
            if task in GENERATION_TASKS or "candidates" not in item:
                kind, options, truth = OPEN, (), answer
                if "scoring_points" in item:
                    extra["scoring_points"] = list(item["scoring_points"])
            else:
                options = _candidates(item, where)
                kind, truth = CHOICE, answer_letter(options, answer)
            questions.append(
                BenchQuestion(
                    id=f"{task}_{index}",
                    # the HF dataset keeps each task's videos in video/<the json's stem>/
                    video=f"MLVU/video/{path.stem}/{video}",
                    ask_time=None,
                    question=question,
                    options=options,
                    answer=truth,
                    task=task,
                    kind=kind,
                    extra=extra,
                )
            )
        return questions

    def prompt(self, question: BenchQuestion) -> str:
        """Multiple choice::

            Carefully watch this video ... addresses the question.
            Question: <question>
            Options:
            (A) <candidate 1>
            ...
            Only give the best option.
            Best Option: (

        Generation tasks: the open_bench.py system line, then the question.
        """
        if question.kind == OPEN:
            return f"{OPEN_SYSTEM}\n{question.question}"
        options = "\n".join(f"({letter(i)}) {text}" for i, text in enumerate(question.options))
        return (
            f"{CHOICE_SYSTEM}\nQuestion: {question.question}\nOptions:\n{options}\n"
            f"{CHOICE_SUFFIX}\n{CHOICE_ANSWER_START}"
        )

    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        correct: dict[str, list[bool]] = {}
        not_scored: dict[str, int] = {}
        missing = 0
        for question in questions:
            if question.kind == OPEN:
                not_scored[question.task] = not_scored.get(question.task, 0) + 1
                continue
            response = responses.get(question.id)
            missing += response is None
            hit = response is not None and parse_choice(response) == question.answer
            correct.setdefault(question.task, []).append(hit)
        per_task = {
            task: {"score": round(100 * mean(hits), 2), "n": len(hits)}
            for task, hits in sorted(correct.items(), key=lambda item: _task_order(item[0]))
        }
        result = {
            "metric": round(mean(100 * mean(hits) for hits in correct.values()), 2),
            "metric_name": self.metric_name,
            "questions": sum(len(hits) for hits in correct.values()),
            "missing": missing,
            "per_task": per_task,
        }
        if not_scored:
            result["not_scored"] = {
                "tasks": not_scored,
                "reason": "generation tasks (G-Avg) are scored by a GPT-4 judge; none is configured",
            }
        return result

    def baseline_response(self, question: BenchQuestion) -> str:
        """The constant baseline: "A" for multiple choice, "" for the generation tasks (not scored)."""
        return "" if question.kind == OPEN else super().baseline_response(question)


def _task_order(task: str) -> int:
    order = MULTIPLE_CHOICE_TASKS + GENERATION_TASKS
    return order.index(task) if task in order else len(order)


def _task(item: Mapping, path: Path, where: str) -> str:
    """The official task key: from ``question_type``, else from the file's name."""
    kind = item.get("question_type")
    if kind is None:
        if path.stem not in FILE_TASKS:
            raise AnnotationError(
                f"{where}: no question_type, and {path.name} is none of MLVU's task files "
                f"({', '.join(FILE_TASKS)})"
            )
        return FILE_TASKS[path.stem]
    if not isinstance(kind, str):
        raise AnnotationError(f"{where}: question_type must be a string, got {kind!r}")
    return TASKS.get(kind, kind)


def _text(item: Mapping, key: str, where: str) -> str:
    if key not in item:
        raise AnnotationError(f"{where}: no {key!r} field; MLVU items have video, question and answer")
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise AnnotationError(f"{where}: {key!r} must be text, got {value!r}")
    return str(value)


def _candidates(item: Mapping, where: str) -> tuple[str, ...]:
    candidates = item["candidates"]
    if not isinstance(candidates, list) or len(candidates) < 2:
        raise AnnotationError(f"{where}: 'candidates' must be a list of at least two option texts")
    if any(isinstance(c, (dict, list)) or c is None for c in candidates):
        raise AnnotationError(f"{where}: 'candidates' must hold option texts, got {candidates!r}")
    return tuple(str(c) for c in candidates)


def _seconds(value, where: str) -> float | None:
    """The video's duration in seconds (published as a number; a numeric string is read too)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: 'duration' must be seconds, got {value!r}") from None
