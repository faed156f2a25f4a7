"""OVO-Bench (Li et al., CVPR 2025, arXiv 2501.05510): online video understanding at a timestamp.

Twelve tasks in three categories. Backward tracing (EPM, ASI, HLD) and real-time visual
perception (STU, OJR, ATR, ACR, OCR, FPD) ask one multiple-choice question at the item's
``realtime``. Forward active responding (REC, SSR, CRR) polls one item several times, once
per ``test_info`` probe at the probe's ``realtime``: REC asks for a count, SSR and CRR for
Yes/No. Each probe is one ``BenchQuestion`` with id ``"<item id>/<probe index>"`` (the
index the official code names its clip ``{id}_{index}.mp4`` by).

Everything here follows the official repository, github.com/JoeLeelyf/OVO-Bench (commit
c34093f, "version-2", the edition its README asks users to report):

- annotations: ``data/ovo_bench_new.json``, read as ``inference.py`` and
  ``utils/OVOBench.py`` read it (``chr(65 + gt)`` is the ground-truth letter; videos are
  ``os.path.join(video_dir, item["video"])`` with ``video_dir`` = ``data/src_videos``);
- prompts: the templates of ``constant.py``, filled as ``OVOBenchOffline.build_prompt``
  fills them;
- scoring: ``utils/OVOBenchScore.py`` (``OVOBenchOfflineScore``) as ``score.py`` runs it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import (
    CHOICE,
    COUNT,
    YESNO,
    AnnotationError,
    Benchmark,
    BenchQuestion,
    letter,
    load_json,
    mean,
)

BACKWARD_TASKS = ("EPM", "ASI", "HLD")
REALTIME_TASKS = ("STU", "OJR", "ATR", "ACR", "OCR", "FPD")
FORWARD_TASKS = ("REC", "SSR", "CRR")

# category -> its tasks; names as the paper's leaderboard table heads them
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Real-Time Visual Perception": REALTIME_TASKS,
    "Backward Tracing": BACKWARD_TASKS,
    "Forward Active Responding": FORWARD_TASKS,
}
TASK_CATEGORY = {task: category for category, tasks in CATEGORIES.items() for task in tasks}

# The prompt templates of constant.py (BR_PROMPT_TEMPLATE, REC_PROMPT_TEMPLATE,
# SSR_PROMPT_TEMPLATE, CRR_PROMPT_TEMPLATE), line by line: their trailing spaces, curly
# quotes and spelling are kept, so a model sees the text the published numbers saw.
_CHOICE_TEMPLATE = "\n".join(
    (
        "",
        "Question: {question}",
        "Options:",
        "{options}",
        "",
        "Respond only with the letter corresponding to your chosen option (e.g., A, B, C). ",
        "Do not include any additional text or explanation in your response.",
        "",
    )
)
_FORWARD_TEMPLATES = {
    "REC": "\n".join(
        (
            "",
            "You're watching a video in which people may perform a certain type of action repetively. ",
            "The person performing this kind of action are referred to as 'they' in the following statement.",
            "You're task is to count how many times have different people in the video perform this kind "
            "of action in total.",
            "One complete motion counts as one. ",
            "Now, answer the following question: {question}",
            "Provide your answer as a single number (e.g., 0, 1, 2, 3\u2026) indicating the total count.",
            "Do not include any additional text or explanation in your response.",
            "",
        )
    ),
    "SSR": "\n".join(
        (
            "",
            "You're watching a tutorial video which contain a sequential of steps. ",
            "The following is one step from the whole procedures: ",
            "{question}",
            "Your task is to determine if the man or woman in the video is currently performing this step.",
            "Answer only with \u201cYes\u201d or \u201cNo\u201d.",
            "Do not include any additional text or explanation in your response.",
            "",
        )
    ),
    "CRR": "\n".join(
        (
            "",
            "You're responsible of answering questions based on the video content. ",
            "The following question are relevant to the latest frames, i.e. the end of the video.",
            "{question}",
            "Decide whether existing visual content, especially latest frames, i.e. frames that near the "
            "end of the video, provide enough information for answering the question.",
            "Answer only with \u201cYes\u201d or \u201cNo\u201d.",
            "Do not include any additional text or explanation in your response.",
            "",
        )
    ),
}

# An option that already carries its letter ("A. Wade"); the official file has one item
# whose options all do (and one of them with the wrong letter), which the official prompt
# would show as "A. A. Wade".
_LETTER_PREFIX = re.compile(r"^\s*[A-Z][.)]\s+")
_CLOCK = re.compile(r"^\d+(:\d{1,2}){1,2}(\.\d+)?$")


class OVOBench(Benchmark):
    """OVO-Bench: 12 tasks, scored per task, per category (mean of its task means) and
    overall (mean of the category scores), as ``utils/OVOBenchScore.py`` scores them."""

    name = "ovo-bench"
    metric_name = "overall accuracy (mean of the three category averages, %)"
    # the online models of the official leaderboard (Flash-VStream, Dispider) and Gemini
    # 1.5 Pro run at 1 fps; the offline ones see 64 frames of the clip up to the question
    default_fps = 1.0
    annotation_files = ("ovo_bench_new.json",)
    # the official inference.py's --video_dir default, relative to its data/ directory
    video_dir = "src_videos"

    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        seen: dict[str, Path] = {}
        for path in annotations:
            items = load_json(path)
            if not isinstance(items, list):
                raise AnnotationError(
                    f"{path}: the top level is a {type(items).__name__}, not the list of items "
                    "ovo_bench_new.json holds; pass the official file"
                )
            for index, item in enumerate(items):
                for question in _item_questions(_Fields(Path(path), index, item)):
                    if question.id in seen:
                        raise AnnotationError(
                            f"{path}: item {index}: id {question.id} also appears in {seen[question.id]}; "
                            "each question id must be unique across the files passed"
                        )
                    seen[question.id] = Path(path)
                    questions.append(question)
        return questions

    def prompt(self, question: BenchQuestion) -> str:
        if question.kind == CHOICE:
            # build_prompt: "A. first; B. second; ...;"
            options = "; ".join(f"{letter(i)}. {text}" for i, text in enumerate(question.options)) + ";"
            return _CHOICE_TEMPLATE.format(question=question.question, options=options)
        return _FORWARD_TEMPLATES[question.task].format(question=question.question)

    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        per_task: dict[str, list[int]] = {}
        per_item: dict[str, dict[str, list[int]]] = {}  # forward task -> item id -> its probes' hits
        missing = 0
        for question in questions:
            response = responses.get(question.id)
            missing += response is None
            hit = is_correct(question, response)
            # the official task mean weighs every probe alike, however many an item has
            per_task.setdefault(question.task, []).append(hit)
            if question.task in FORWARD_TASKS:
                per_item.setdefault(question.task, {}).setdefault(question.extra["item"], []).append(hit)

        task_means = {task: mean(hits) for task, hits in per_task.items()}
        # a category's score is the mean of its task means (not of its questions)
        category_means = {
            category: mean(task_means[task] for task in tasks if task in task_means)
            for category, tasks in CATEGORIES.items()
            if any(task in task_means for task in tasks)
        }
        # score.py's "Total Avg." is the mean of the three category scores (it stops with an
        # error when a category is absent; here the overall is over the categories present)
        overall = mean(category_means.values())
        return {
            "metric": round(100 * overall, 2),
            "metric_name": self.metric_name,
            "questions": len(questions),
            "missing": missing,
            "per_category": {
                category: {
                    "score": round(100 * value, 2),
                    "tasks": [task for task in CATEGORIES[category] if task in task_means],
                }
                for category, value in category_means.items()
            },
            "per_task": {
                task: {
                    "score": round(100 * task_means[task], 2),
                    "n": len(per_task[task]),
                    "category": category,
                    **_item_breakdown(per_item.get(task)),
                }
                for category, tasks in CATEGORIES.items()
                for task in tasks
                if task in task_means
            },
        }

    def video_path(self, data_dir: str | Path, question: BenchQuestion) -> Path:
        """``DIR/src_videos/<video>`` (the official ``data/`` layout), or ``DIR/<video>`` when
        ``DIR`` is the videos' folder itself."""
        official = Path(data_dir) / self.video_dir / question.video
        return official if official.exists() else Path(data_dir) / question.video


def _item_breakdown(items: dict[str, list[int]] | None) -> dict:
    """For a forward task, beside the official probe mean: how many items its probes came
    from, and the mean over items of each item's probe accuracy. Not the official metric;
    some papers report it (TimeChat-Online's eval/scripts/ovobench.py averages per item)."""
    if not items:
        return {}
    return {"items": len(items), "item_mean": round(100 * mean(mean(hits) for hits in items.values()), 2)}


def is_correct(question: BenchQuestion, response: str | None) -> int:
    """1 if ``response`` is right by the official rules of ``utils/OVOBenchScore.py``, else 0.

    Case-sensitive substring tests, as the official script makes them:
    - multiple choice: the ground-truth letter occurs anywhere in the response (so
      "Answer: C" counts as "A");
    - SSR/CRR yes/no: the response is exactly "Y"/"N" for Yes/No, or "Yes"/"No" occurs in
      it (so "Not yet" counts as "No", "yes" as neither);
    - REC count: every digit run of the response, concatenated, equals the count ("2 or 3"
      reads as 23).
    A missing response (``None``) is wrong.
    """
    if response is None:
        return 0
    if question.kind == COUNT:
        return int("".join(re.findall(r"\d+", response)) == question.answer)
    if question.kind == YESNO and response == question.answer[0]:
        return 1
    return int(question.answer in response)


class _Fields:
    """The fields of one annotation item (or of one of its ``test_info`` probes), read with
    checks: every error names the file, the item (index and id) and the field."""

    def __init__(self, path: Path, index: int, raw, prefix: str = "", item_id=None) -> None:
        self.path, self.index, self.raw, self.prefix = path, index, raw, prefix
        if item_id is None:
            item_id = raw.get("id", "?") if isinstance(raw, dict) else "?"
        self.item_id = item_id
        if not isinstance(raw, dict):
            self.fail("", f"is {raw!r}, not an object")

    def probe(self, number: int, raw) -> _Fields:
        return _Fields(self.path, self.index, raw, f"test_info[{number}].", self.item_id)

    def fail(self, field: str, problem: str):
        name = f"{self.prefix}{field}".rstrip(".")
        where = f"{self.path}: item {self.index} (id {self.item_id})" + (f": field {name!r}" if name else "")
        raise AnnotationError(f"{where} {problem}; pass the official ovo_bench_new.json format")

    def get(self, field: str):
        if field not in self.raw:
            self.fail(field, "is missing")
        return self.raw[field]

    def text(self, field: str) -> str:
        value = self.get(field)
        if not isinstance(value, str) or not value.strip():
            self.fail(field, f"is {value!r}, not a non-empty string")
        return value

    def integer(self, field: str) -> int:
        """An int; integral floats (3.0) and digit strings ("3") are the same number."""
        value = self.get(field)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"is {value!r}, not an integer")
        return value

    def seconds(self, field: str) -> float:
        """A time in seconds: a number as the official file has it (int or float), or a
        string ("88.43", "01:28.43", "0:01:28")."""
        value = self.get(field)
        seconds = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and _CLOCK.match(value.strip()):
            seconds = 0.0
            for part in value.strip().split(":"):
                seconds = seconds * 60 + float(part)
        elif isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                pass
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            self.fail(field, f"is {value!r}, not a time in seconds")
        return seconds

    def probes(self) -> list[_Fields]:
        probes = self.get("test_info")
        if not isinstance(probes, list) or not probes:
            self.fail("test_info", f"is {probes!r}, not a non-empty list of probes")
        return [self.probe(number, raw) for number, raw in enumerate(probes)]

    def yes_no(self) -> str:
        """A probe's ``type``: 1 is "Yes", 0 is "No" (the official
        ``gt = "No" if type == 0 else "Yes"``)."""
        value = self.integer("type")
        if value not in (0, 1):
            self.fail("type", f"is {value}, not 0 (No) or 1 (Yes)")
        return "Yes" if value == 1 else "No"


def _item_questions(item: _Fields) -> list[BenchQuestion]:
    """The ``BenchQuestion`` s of one official item: one for a backward or real-time task,
    one per ``test_info`` probe for a forward task."""
    item_id = item.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (int, str)) or not str(item_id).strip():
        item.fail("id", f"is {item_id!r}, not an integer or a string")
    item_id = str(item_id)
    task = item.text("task")
    if task not in TASK_CATEGORY:
        item.fail("task", f"is {task!r}, not one of {', '.join(TASK_CATEGORY)}")
    common = {"video": item.text("video"), "task": task}
    extra = {"category": TASK_CATEGORY[task]}
    if task not in FORWARD_TASKS:
        return [_choice_question(item, item_id, common, extra)]

    if task == "REC":
        # build_prompt: "How many times did they " + activity + "?"
        question = f"How many times did they {item.text('activity')}?"
    elif task == "CRR":
        question = item.text("question")
    questions = []
    for number, probe in enumerate(item.probes()):
        if task == "REC":
            count = probe.integer("count")
            if count < 0:
                probe.fail("count", f"is {count}, a negative count")
            kind, answer = COUNT, str(count)
        else:
            if task == "SSR":
                question = probe.text("step")
            kind, answer = YESNO, probe.yes_no()
        questions.append(
            BenchQuestion(
                id=f"{item_id}/{number}",
                ask_time=probe.seconds("realtime"),
                question=question,
                answer=answer,
                kind=kind,
                extra={**extra, "item": item_id, "probe": number},
                **common,
            )
        )
    return questions


def _choice_question(item: _Fields, item_id: str, common: dict, extra: dict) -> BenchQuestion:
    options = item.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        item.fail("options", f"is {options!r}, not a list of at least two strings")
    if all(_LETTER_PREFIX.match(option) for option in options):
        options = [_LETTER_PREFIX.sub("", option, count=1) for option in options]
    gt = item.integer("gt")
    if not 0 <= gt < len(options):
        item.fail("gt", f"is {gt}, not the index of one of the {len(options)} options")
    return BenchQuestion(
        id=item_id,
        ask_time=item.seconds("realtime"),
        question=item.text("question"),
        options=tuple(options),
        answer=letter(gt),  # the official ground truth: chr(65 + gt)
        kind=CHOICE,
        extra=extra,
        **common,
    )
