"""Video-MME: 2,700 four-option questions over 900 videos (short / medium / long), asked
offline after the whole video, in the setting without subtitles.

Official files (the Hugging Face dataset ``lmms-lab/Video-MME``, linked from github
BradyFU/Video-MME): ``videomme/test-00000-of-00001.parquet``, one row per question
``{video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
question, options, answer}``, videos under ``data/<videoID>.mp4``. The repository's results
template (``evaluation/output_test_template.json``) nests the questions under their video
``{video_id, duration, domain, sub_category, questions: [{question_id, task_type, question,
options, answer, response}]}`` (its first version named fields ``duration_category``,
``video_category``, ``video_subcategory`` and ``choices``; the current one has a "," after
each ``response``); all these are read (JSON, JSON Lines, or Parquet when pyarrow is
installed).

Official rules implemented (from ``eval_your_results.py`` of github thanku-all/parse_answer,
the script the Video-MME README links; it replaced BradyFU/Video-MME
``evaluation/eval_your_results.py``, removed in commit 49a2e67):

- answer extraction: strip the response, delete each answer prefix of their list (two of
  their entries lack a comma, so Python joins them: "The best option isThe correct option
  is" and "Best answer:Best option:", which therefore never match), then take the first
  capital A, B, C or D anywhere in what is left; none found gives no answer;
- a response with no extracted letter is not counted at all (their ``answered`` counter
  skips it); a question without any response counts as answered wrong here (their script
  refuses incomplete files) and is reported in ``missing``;
- accuracy = correct / answered, per duration, per domain, per sub-category, per task
  type and overall, printed with one decimal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import AnnotationError, Benchmark, BenchQuestion, letter, load_json, mean

DURATIONS = ("short", "medium", "long")
# the official scripts' lists, which set the order of each breakdown
DOMAINS = (
    "Knowledge",
    "Film & Television",
    "Sports Competition",
    "Artistic Performance",
    "Life Record",
    "Multilingual",
)
SUB_CATEGORIES = (
    "Humanity & History",
    "Literature & Art",
    "Biology & Medicine",
    "Finance & Commerce",
    "Astronomy",
    "Geography",
    "Law",
    "Life Tip",
    "Technology",
    "Animation",
    "Movie & TV Show",
    "Documentary",
    "News Report",
    "Esports",
    "Basketball",
    "Football",
    "Athletics",
    "Other Sports",
    "Stage Play",
    "Magic Show",
    "Variety Show",
    "Acrobatics",
    "Handicraft",
    "Food",
    "Fashion",
    "Daily Life",
    "Travel",
    "Pet & Animal",
    "Exercise",
    "Multilingual",
)
TASK_TYPES = (
    "Temporal Perception",
    "Spatial Perception",
    "Attribute Perception",
    "Action Recognition",
    "Object Recognition",
    "OCR Problems",
    "Counting Problem",
    "Temporal Reasoning",
    "Spatial Reasoning",
    "Action Reasoning",
    "Object Reasoning",
    "Information Synopsis",
)

# Deleted from a response before the letter is looked for, in this order. The two joined
# entries reproduce the official list's missing commas; "Answer:" must go because its "A"
# would be read as the answer.
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
CHOICE_LETTER = re.compile(r"[ABCD]")
# a JSON string (kept, group 1), or a "," before a closing bracket (dropped, group 2 kept)
TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')
# "A. text" / "(A) text" / "A) text" / "A: text": the option's own letter before its text
OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")

# README "Prompt", without subtitles (the subtitle lines are dropped, as it says)
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
ANSWER_START = "The best answer is:"
QUESTION_FIELDS = ("question_id", "task_type", "question", "options", "answer")
VIDEO_FIELDS = ("video_id", "duration", "domain", "sub_category")
# the first results template (BradyFU/Video-MME before 2024-06-18) and the eval script of
# then named these fields so
FIRST_TEMPLATE_NAMES = {
    "duration_category": "duration",
    "video_category": "domain",
    "video_subcategory": "sub_category",
    "choices": "options",
}
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")  # those the videos are published with


def extract_choice(response: str) -> str:
    """The letter the official script reads from ``response`` ("" when none)."""
    text = response.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    found = CHOICE_LETTER.search(text)
    return found[0] if found else ""


class VideoMME(Benchmark):
    """Video-MME without subtitles: accuracy overall and per duration, domain,
    sub-category and task type (``score``)."""

    name = "video-mme"
    metric_name = "accuracy"
    default_fps = 1.0
    # the HF rows converted to JSON Lines (docs: for machines without pyarrow), else the
    # HF Parquet file itself: the same questions, so only the first present is read
    annotation_files = ("videomme/videomme.jsonl", "videomme/test-00000-of-00001.parquet")

    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        seen: set[str] = set()
        for path in annotations:
            for question in self._load_file(Path(path)):
                if question.id in seen:
                    raise AnnotationError(f"{path}: question_id {question.id!r} appears twice")
                seen.add(question.id)
                questions.append(question)
        return questions

    def _load_file(self, path: Path) -> list[BenchQuestion]:
        questions = []
        for row, where in _rows(path):
            for key in VIDEO_FIELDS + QUESTION_FIELDS:
                if key not in row:
                    raise AnnotationError(f"{where}: no {key!r} field (Video-MME questions have {key})")
            duration = _string(row, "duration", where)
            if duration not in DURATIONS:
                raise AnnotationError(f"{where}: duration {duration!r} is not one of {', '.join(DURATIONS)}")
            options = _options(row["options"], where)
            answer = _string(row, "answer", where).strip()
            if answer not in {letter(i) for i in range(len(options))}:
                raise AnnotationError(
                    f"{where}: answer {answer!r} is not the letter of one of its {len(options)} options"
                )
            video_id = _string(row, "video_id", where)
            questions.append(
                BenchQuestion(
                    id=_string(row, "question_id", where),
                    video=f"data/{_youtube_id(row) or video_id}.mp4",
                    ask_time=None,
                    question=_string(row, "question", where),
                    options=options,
                    answer=answer,
                    task=_string(row, "task_type", where),
                    extra={
                        "video_id": video_id,
                        "duration": duration,
                        "domain": _string(row, "domain", where),
                        "sub_category": _string(row, "sub_category", where),
                    },
                )
            )
        return questions

    def prompt(self, question: BenchQuestion) -> str:
        """The README's prompt without subtitles::

        Select the best answer ... Respond with only the letter (A, B, C, or D) of the correct option.
        <question>
        A. <option 1>
        ...
        The best answer is:
        """
        options = "\n".join(f"{letter(i)}. {text}" for i, text in enumerate(question.options))
        return f"{INSTRUCTION}\n{question.question}\n{options}\n{ANSWER_START}"

    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        counted: list[tuple[BenchQuestion, bool]] = []
        missing = unparsed = 0
        for question in questions:
            response = responses.get(question.id)
            if response is None:
                missing += 1
                counted.append((question, False))
                continue
            choice = extract_choice(response)
            if not choice:
                unparsed += 1
                continue
            counted.append((question, choice == question.answer))
        hits = [hit for _, hit in counted]
        return {
            "metric": _percent(hits),
            "metric_name": self.metric_name,
            "questions": len(questions),
            "answered": len(counted),
            "missing": missing,
            "unparsed": unparsed,
            # lmms-eval's videomme task counts responses without a letter as wrong
            "metric_unparsed_as_wrong": round(100 * sum(hits) / len(questions), 1) if questions else 0.0,
            "per_duration": _breakdown(counted, lambda q: q.extra["duration"], DURATIONS),
            "per_domain": _breakdown(counted, lambda q: q.extra["domain"], DOMAINS),
            "per_sub_category": _breakdown(counted, lambda q: q.extra["sub_category"], SUB_CATEGORIES),
            "per_task": _breakdown(counted, lambda q: q.task, TASK_TYPES),
        }

    def default_annotations(self, data_dir: str | Path) -> list[Path]:
        """The first of ``annotation_files`` inside ``data_dir`` (each holds every question)."""
        return super().default_annotations(data_dir)[:1]

    def video_path(self, data_dir: str | Path, question: BenchQuestion) -> Path:
        """``data/<videoID>.mp4``, or the .MP4 / .mkv file of that name where that is the one
        present (a few published videos have those suffixes)."""
        default = Path(data_dir) / question.video
        for suffix in VIDEO_SUFFIXES:
            candidate = default.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return default


def _percent(hits: Sequence[bool]) -> float:
    return round(100 * mean(hits), 1)


def _breakdown(counted, key, official_order: Sequence[str]) -> dict:
    """``{group: {"score", "n"}}`` over the counted questions, in the official order (groups
    the official lists lack follow, in file order)."""
    groups: dict[str, list[bool]] = {}
    for question, hit in counted:
        groups.setdefault(key(question), []).append(hit)
    order = {name: i for i, name in enumerate(official_order)}
    ranked = sorted(groups, key=lambda name: order.get(name, len(order)))
    return {name: {"score": _percent(groups[name]), "n": len(groups[name])} for name in ranked}


def _rows(path: Path):
    """``(question row, where)`` for every question of a file in either official layout;
    a nested row carries its video's fields."""
    for index, item in enumerate(_items(path)):
        where = f"{path} item {index}"
        if not isinstance(item, Mapping):
            raise AnnotationError(f"{where}: not a JSON object")
        if "questions" not in item:
            yield _current_names(item), where
            continue
        nested = item["questions"]
        if not isinstance(nested, list):
            raise AnnotationError(f"{where}: 'questions' must be a list of question objects")
        video_fields = {key: value for key, value in item.items() if key != "questions"}
        for number, question in enumerate(nested):
            if not isinstance(question, Mapping):
                raise AnnotationError(f"{where} question {number}: not a JSON object")
            yield _current_names({**video_fields, **question}), f"{where} question {number}"


def _current_names(item: Mapping) -> Mapping:
    """``item`` with the first template's field names renamed to today's."""
    if not any(old in item for old in FIRST_TEMPLATE_NAMES):
        return item
    return {FIRST_TEMPLATE_NAMES.get(key, key): value for key, value in item.items()}


def _items(path: Path) -> list:
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            load_json(path)  # its error names the missing file
        try:
            return [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        except json.JSONDecodeError as exc:
            raise AnnotationError(
                f"{path} is not JSON Lines ({exc}); pass Video-MME's official file"
            ) from None
    items = _load_json_allowing_trailing_commas(path)
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of videos or of questions (Video-MME's layout)")
    return items


def _load_json_allowing_trailing_commas(path: Path):
    """A JSON file, also when a "," ends an object or a list: the results template
    BradyFU/Video-MME ships (``evaluation/output_test_template.json``) has them after each
    ``"response"``."""
    try:
        return load_json(path)
    except AnnotationError:
        if not path.is_file():
            raise
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            # strings are matched whole first, so a "," inside one is never touched
            return json.loads(TRAILING_COMMA.sub(lambda m: m[1] or m[2], text))
        except json.JSONDecodeError as exc:
            raise AnnotationError(
                f"{path} is not JSON ({exc}); pass Video-MME's official annotation file"
            ) from None


def _parquet_rows(path: Path) -> list[dict]:
    if not path.is_file():
        load_json(path)  # its error names the missing file
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise AnnotationError(
            f"{path}: reading Parquet needs pyarrow; `pip install 'streamvlm[eval]'` (or pyarrow), or pass the rows as JSON"
        ) from None
    try:
        return parquet.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise AnnotationError(
            f"{path} is not a Parquet file ({exc}); pass Video-MME's official file"
        ) from None


def _string(row: Mapping, key: str, where: str) -> str:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AnnotationError(f"{where}: {key!r} must be text, got {value!r}")
    return str(value)


def _options(options, where: str) -> tuple[str, ...]:
    """The option texts without their "A. " letters (kept where an option has none)."""
    if not isinstance(options, (list, tuple)) or not 2 <= len(options) <= 4:
        raise AnnotationError(f"{where}: 'options' must be a list of 2 to 4 texts like \"A. ...\"")
    texts = []
    for index, option in enumerate(options):
        if not isinstance(option, str):
            raise AnnotationError(f"{where}: option {index} must be text, got {option!r}")
        found = OPTION_PREFIX.match(option)
        texts.append(option[found.end() :] if found and found[1] == letter(index) else option.strip())
    return tuple(texts)


def _youtube_id(row: Mapping) -> str:
    """The video's file name: ``videoID`` (the HF rows), else the ``v=`` of its ``url``."""
    if row.get("videoID"):
        return str(row["videoID"])
    found = re.search(r"[?&]v=([\w-]+)", str(row.get("url") or ""))
    return found[1] if found else ""
