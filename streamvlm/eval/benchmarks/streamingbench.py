"""StreamingBench (Lin et al., arXiv 2411.03628): streaming video understanding, four files.

The official repository (github.com/THUNLP-MT/StreamingBench) ships its questions under
``src/data/``, grouped by video segment: ``[{"video_path", "time", "questions": [...]}]``.

- ``questions_real.json`` (real-time visual understanding, 10 tasks) and
  ``questions_omni.json`` (omni-source tasks, plus the contextual tasks "Anomaly Context
  Understanding" and "Misleading Context Understanding"): multiple choice, ``time_stamp``
  "HH:MM:SS" (also "H:MM:SS" and "MM:SS"), ``options`` "A. ...", ``answer`` a letter;
- ``questions_sqa.json`` (sequential question answering): a list per video of those
  segments; each question is asked with the earlier questions of its video and their
  ground-truth answers as context, and its options may come without "A." prefixes;
- ``questions_proactive.json`` / ``questions_proactive_50.json`` (proactive output): the
  model is polled once a second from ``time_stamp`` on, "is it the right time to output
  X?", until it says yes, then asked the question; right when it said yes within 2 s of
  ``ground_truth_time_stamp`` and its answer contains ``ground_truth_output``;
- ``questions_{real,omni,sqa}_stream.json``: the same questions regrouped one segment per
  video (each question with its own ``time`` and ``audio_path``), asked without context.

A proactive item becomes several ``BenchQuestion`` s: a yes/no probe each second
(``<item>/probe@<t>``) and, for every second at which a first "yes" would be on time, the
question itself (``<item>/answer@<t>``). The driver asks them all; ``score`` replays the
official polling (the first probe that says yes ends it) on the responses, which gives the
official result without a driver that branches on answers.

Multiple-choice responses are scored as ``src/data/count.py`` scores them: the first
character of the response must equal the answer letter.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import CHOICE, OPEN, YESNO, AnnotationError, Benchmark, BenchQuestion, letter, load_json

REAL_TIME = "Real-Time Visual Understanding"
OMNI_SOURCE = "Omni-Source Understanding"
CONTEXTUAL = "Contextual Understanding"
OTHER = "Other"
# the paper's task taxonomy (Table 1): which column group each official task_type is in
CATEGORY_OF_TASK = {
    "Object Recognition": REAL_TIME,
    "Causal Reasoning": REAL_TIME,
    "Clips Summarize": REAL_TIME,
    "Attribute Recognition": REAL_TIME,
    "Event Understanding": REAL_TIME,
    "Text-Rich Understanding": REAL_TIME,
    "Prospective Reasoning": REAL_TIME,
    "Spatial Understanding": REAL_TIME,
    "Action Recognition": REAL_TIME,
    "Counting": REAL_TIME,
    "Emotion Recognition": OMNI_SOURCE,
    "Scene Understanding": OMNI_SOURCE,
    "Source Discrimination": OMNI_SOURCE,
    "Multimodal Alignment": OMNI_SOURCE,
    "Anomaly Context Understanding": CONTEXTUAL,
    "Misleading Context Understanding": CONTEXTUAL,
    "Sequential Question Answering": CONTEXTUAL,
    "Proactive Output": CONTEXTUAL,
}

# Prompts, worded as in the official repository: src/benchmark/StreamingBench.py
# (PROMPT_TEMPLATE, PROMPT_TEMPLATE_WITHOUT_OPTIONS), src/benchmark/StreamingBenchSQA.py
# (PROMPT_TEMPLATE) and src/benchmark/StreamingBenchProactive.py (PROMPT_TEMPLATE_PROACTIVE).
# The templates have four option slots: Python's str.format drops the fifth to seventh
# options a few omni questions have, so the official prompt shows A-D only, as here.
_INTRO = "You are an advanced video question-answering AI assistant."
CHOICE_TEMPLATE = (
    _INTRO + " You have been provided with some frames from the video and a multiple-choice question "
    "related to the video. Your task is to carefully analyze the video and provide the best answer to "
    "question, choosing from the four options provided. Respond with only the letter (A, B, C, or D) of "
    "the correct option.\n\nQuestion: {question}\n\nOptions:\n{options}\n\nThe best option is:"
)
OPEN_TEMPLATE = (
    _INTRO + " You have been provided with a video and a question related to the video. Your task is to "
    "carefully analyze the video and provide the answer to the question. \n\nQuestion: {question}\n"
    "\n\nAnswer:"
)
SQA_TEMPLATE = (
    _INTRO + " You have been provided with a video and a multiple-choice question related to the video. "
    "Your task is to carefully analyze the video and the provided context to answer the question, "
    "choosing from the four options provided. Respond with only the letter (A, B, C, or D) of the correct "
    "option.\n\n{context}\n\nHere is the question. Answer it and don't confuse it with the previous "
    "conversation.\nQuestion: {question}\n\nOptions:\n{options}\n\nThe best option is:"
)
SQA_CONTEXT_INTRO = (
    "Here are the contextual information related to the video. Please answer the questions based on the "
    "contextual information: "
)
SQA_CONTEXT_ITEM = (
    "At timestamp {time_stamp}, the following question and answer occurred: Question: {question}; "
    "Options: {options}; Answer: {answer}; "
)
PROACTIVE_TEMPLATE = (
    "You are an advanced image question-answering AI assistant. You have been provided with images and a "
    "question related to the images. Your task is to carefully analyze the images and provide the answer "
    "to the question. You need to carefully confirm whether the images content meet the conditions of the "
    "question, and then output the correct content.\n\nQuestion: {question}\n\nThe answer is:\n"
)
PROACTIVE_PROBE = '{question} Is it the right time to output "{output}"? You can only answer yes or no.'

SHOWN_OPTIONS = 4  # option slots of the official templates
# proactive polling (StreamingBenchProactive.py): from time_stamp + 1 s to the ground
# truth + 4 s, once a second; count.py: on time within 2 s of the ground truth
POLL_AFTER_GROUND_TRUTH_S = 4
ON_TIME_S = 2

# descriptive fields of the official questions, kept in ``BenchQuestion.extra``
CARRIED_FIELDS = ("required_ability", "video_categories", "audio_path", "cause", "effect")

PROBE = "probe"
ANSWER = "answer"
_OPTION_PREFIX = re.compile(r"^\s*([A-Z])\.\s*")


def parse_time_stamp(value, where: str) -> float:
    """Seconds from an official ``time_stamp``: "HH:MM:SS", "H:MM:SS" or "MM:SS" (as the
    official code reads them, each field times a power of 60), or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\d+(:\d+){0,2}", value.strip()):
        return float(sum(int(x) * 60**i for i, x in enumerate(reversed(value.strip().split(":")))))
    raise AnnotationError(f'{where}: time stamp {value!r} is not "HH:MM:SS"; fix the file')


def _choice_letter(response: str) -> str:
    """What count.py compares with the answer: the response's first character, as is."""
    return response[:1]


class StreamingBench(Benchmark):
    """StreamingBench's official files in, the paper's Overall accuracy and breakdown out.

    The full-history setting asks every question with the whole stream up to its time; the
    paper's main table uses 60 s of context before each question (the driver's
    ``--context-seconds 60``). Proactive items always start at their own ``time_stamp``.
    """

    name = "streamingbench"
    metric_name = "accuracy (%, all questions: the paper's Overall)"
    default_fps = 1.0
    annotation_files = (
        "questions_real.json",
        "questions_omni.json",
        "questions_sqa.json",
        "questions_proactive.json",
    )

    # ---- loading -------------------------------------------------------------------------

    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        for path in annotations:
            questions.extend(self._load_file(Path(path)))
        seen: set[str] = set()
        for question in questions:
            if question.id in seen:
                raise AnnotationError(
                    f"question id {question.id} appears twice; pass each annotation file once "
                    "(ids are <file stem>/<segment>/<question>)"
                )
            seen.add(question.id)
        return questions

    def _load_file(self, path: Path) -> list[BenchQuestion]:
        data = load_json(path)
        if not isinstance(data, list) or not data:
            raise AnnotationError(f"{path}: not a list of video segments; pass an official questions_*.json")
        if all(isinstance(video, list) for video in data):  # questions_sqa.json: one list per video
            return [
                question
                for v, video in enumerate(data)
                for question in self._load_segments(path, video, f"{path.stem}/{v}", with_context=True)
            ]
        return self._load_segments(path, data, path.stem, with_context=False)

    def _load_segments(
        self, path: Path, segments: list, prefix: str, with_context: bool
    ) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        previous: list[dict] = []  # sqa: the video's earlier questions, in file order
        for s, segment in enumerate(segments):
            where = f"{path}: segment {prefix}/{s}"
            if not isinstance(segment, dict) or not isinstance(segment.get("questions"), list):
                raise AnnotationError(f'{where} has no "questions" list; pass an official questions_*.json')
            video = segment.get("video_path")
            if not isinstance(video, str) or not video.strip():
                raise AnnotationError(f'{where} has no "video_path"; fix the file')
            video = video.strip().removeprefix("./")
            for q, item in enumerate(segment["questions"]):
                qid = f"{prefix}/{s}/{q}"
                if not isinstance(item, dict):
                    raise AnnotationError(f"{path}: question {qid} is not an object; fix the file")
                if "video_categories" in segment:
                    item = {"video_categories": segment["video_categories"], **item}
                if "ground_truth_time_stamp" in item:
                    questions.extend(self._proactive(path, qid, video, item))
                    continue
                question = self._multiple_choice(path, qid, video, item, previous if with_context else None)
                questions.append(question)
                if with_context:
                    previous.append(
                        {
                            "time_stamp": str(item["time_stamp"]),
                            "question": question.question,
                            "options": _shown_options(question),
                            "answer": question.answer,
                        }
                    )
        return questions

    @staticmethod
    def _field(path: Path, qid: str, item: dict, key: str) -> str:
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            raise AnnotationError(f'{path}: question {qid} has no "{key}" text; fix the file')
        return value

    def _multiple_choice(
        self, path: Path, qid: str, video: str, item: dict, previous: list[dict] | None
    ) -> BenchQuestion:
        where = f"{path}: question {qid}"
        text = self._field(path, qid, item, "question")
        task = self._field(path, qid, item, "task_type")
        ask_time = parse_time_stamp(item.get("time_stamp"), where)
        answer = self._field(path, qid, item, "answer").strip()
        extra = {"category": CATEGORY_OF_TASK.get(task, OTHER), "time_stamp": str(item["time_stamp"])}
        extra.update(_carried(item))
        if previous is not None:
            extra["previous"] = [dict(p) for p in previous]
        if "options" not in item:  # the official prompt's no-options branch
            return BenchQuestion(qid, video, ask_time, text, (), answer, task, OPEN, extra=extra)
        raw = item["options"]
        if not isinstance(raw, list) or len(raw) < SHOWN_OPTIONS or not all(isinstance(o, str) for o in raw):
            raise AnnotationError(
                f'{where}: "options" must list at least {SHOWN_OPTIONS} texts (the official prompt shows '
                "four); fix the file"
            )
        options = _strip_letters(raw)
        if raw[0].startswith("A.") and _lettered(options) != raw:
            # a few omni rows letter their options out of order ("B." twice): the official
            # prompt shows them as written
            extra["official_options"] = list(raw)
        if not re.fullmatch(r"[A-Z]", answer) or ord(answer) - ord("A") >= len(options):
            raise AnnotationError(
                f'{where}: "answer" {answer!r} is not the letter of an option; fix the file'
            )
        return BenchQuestion(qid, video, ask_time, text, options, answer, task, CHOICE, extra=extra)

    def _proactive(self, path: Path, qid: str, video: str, item: dict) -> list[BenchQuestion]:
        where = f"{path}: question {qid}"
        text = self._field(path, qid, item, "question")
        task = self._field(path, qid, item, "task_type")
        output = self._field(path, qid, item, "ground_truth_output")
        start = parse_time_stamp(item.get("time_stamp"), where)
        truth = parse_time_stamp(item.get("ground_truth_time_stamp"), where)
        if truth < start:
            raise AnnotationError(f"{where}: ground_truth_time_stamp is before time_stamp; fix the file")
        common = {
            "category": CATEGORY_OF_TASK.get(task, OTHER),
            "item": qid,
            "ground_truth_time": truth,
            "ground_truth_output": output,
            **_carried(item),
        }
        questions = []
        # whole seconds, as the official loop counts them from the parsed time stamps
        for t in range(int(start) + 1, int(truth) + POLL_AFTER_GROUND_TRUTH_S + 1):
            on_time = abs(t - truth) <= ON_TIME_S
            probe = BenchQuestion(
                f"{qid}/{PROBE}@{t}", video, float(t), text, (), "Yes" if on_time else "No", task, YESNO,
                context_start=start, extra={**common, "role": PROBE},
            )  # fmt: skip
            questions.append(probe)
            if on_time:  # only an answer given within 2 s of the truth can score
                answer = BenchQuestion(
                    f"{qid}/{ANSWER}@{t}", video, float(t), text, (), output, task, OPEN,
                    context_start=start, extra={**common, "role": ANSWER},
                )  # fmt: skip
                questions.append(answer)
        return questions

    def video_path(self, data_dir: str | Path, question: BenchQuestion) -> Path:
        """``DIR/videos/<name>.mp4`` for the official "./videos/<name>.mp4"; a path made
        absolute by the official preprocess.sh is used where it exists, else looked up
        under ``DIR/videos/``."""
        path = Path(question.video)
        if not path.is_absolute():
            return Path(data_dir) / path
        return path if path.is_file() else Path(data_dir) / "videos" / path.name

    # ---- prompting -----------------------------------------------------------------------

    def prompt(self, question: BenchQuestion) -> str:
        role = question.extra.get("role")
        if role == PROBE:
            probe = PROACTIVE_PROBE.format(
                question=question.question, output=question.extra["ground_truth_output"]
            )
            return PROACTIVE_TEMPLATE.format(question=probe)
        if role == ANSWER:
            return PROACTIVE_TEMPLATE.format(question=question.question)
        if question.kind == OPEN:
            return OPEN_TEMPLATE.format(question=question.question)
        options = "\n".join(_shown_options(question))
        if "previous" not in question.extra:
            return CHOICE_TEMPLATE.format(question=question.question, options=options)
        context = "".join(
            SQA_CONTEXT_ITEM.format(
                time_stamp=p["time_stamp"],
                question=p["question"],
                options=", ".join(p["options"]),
                answer=p["answer"],
            )
            for p in question.extra["previous"]
        )
        context = SQA_CONTEXT_INTRO + context if context else ""
        return SQA_TEMPLATE.format(context=context, question=question.question, options=options)

    # ---- scoring -------------------------------------------------------------------------

    def baseline_response(self, question: BenchQuestion) -> str:
        """As ``Benchmark``'s (A, "No"); a proactive answer is never reached after "No"
        probes, and a no-options question gets an empty answer."""
        if question.kind == OPEN:
            return ""
        return super().baseline_response(question)

    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        """The paper's Overall: accuracy over every question (a proactive item counts once,
        right when count.py's ``answer_correct`` holds), with per-task and per-category
        accuracy (each the share of its questions answered right) and the proactive
        time/answer accuracies of count.py."""
        outcomes: list[tuple[str, str, bool]] = []  # (task, category, right)
        missing = 0
        items: dict[str, list[BenchQuestion]] = defaultdict(list)
        for question in questions:
            if "role" in question.extra:
                items[question.extra["item"]].append(question)
                continue
            response = responses.get(question.id)
            missing += response is None
            right = response is not None and _choice_letter(response) == question.answer
            outcomes.append((question.task, question.extra.get("category", OTHER), right))
        on_time = answered = 0
        for item in items.values():
            timely, right, absent = _replay_proactive(item, responses)
            on_time += timely
            answered += right
            missing += absent
            outcomes.append((item[0].task, item[0].extra["category"], right))
        result = {
            "metric": _percent(sum(r for *_, r in outcomes), len(outcomes)),
            "metric_name": self.metric_name,
            "questions": len(outcomes),
            "missing": missing,
            "per_category": _breakdown((category, right) for _, category, right in outcomes),
            "per_task": _breakdown((task, right) for task, _, right in outcomes),
        }
        if items:
            result["proactive"] = {
                "items": len(items),
                "time_accuracy": _percent(on_time, len(items)),
                "answer_accuracy": _percent(answered, len(items)),
            }
        return result


def _strip_letters(options: list[str]) -> tuple[str, ...]:
    """Option texts without "A. " prefixes. As the official code decides, the options are
    lettered only when the first starts with "A."; otherwise every text is kept whole (an
    unlettered option such as "2." or "A man." is its own text)."""
    if not options[0].startswith("A."):
        return tuple(options)
    stripped = []
    for index, option in enumerate(options):
        match = _OPTION_PREFIX.match(option)
        stripped.append(option[match.end() :] if match and match.group(1) == letter(index) else option)
    return tuple(stripped)


def _carried(item: dict) -> dict:
    """The official descriptive fields a question has, kept for breakdowns of one's own."""
    return {key: item[key] for key in CARRIED_FIELDS if key in item}


def _shown_options(question: BenchQuestion) -> list[str]:
    """The lettered options the official prompt shows: the first four."""
    shown = question.extra.get("official_options") or _lettered(question.options)
    return list(shown[:SHOWN_OPTIONS])


def _lettered(options: Sequence[str]) -> list[str]:
    return [f"{letter(i)}. {text}" for i, text in enumerate(options)]


def _replay_proactive(item: list[BenchQuestion], responses: Mapping[str, str]) -> tuple[bool, bool, bool]:
    """(on time, right, a needed response missing) for one proactive item.

    StreamingBenchProactive.py stops polling at the first probe whose response contains
    "yes" (any case, anywhere) and then asks the question; count.py takes the time of the
    dialogue's last turn (the last probe's, ground truth + 4 s, when no probe said yes) and
    counts the item on time within 2 s of the truth, and right when on time and the answer
    contains ``ground_truth_output``.
    """
    probes = sorted((q for q in item if q.extra["role"] == PROBE), key=lambda q: q.ask_time)
    answers = {q.ask_time: q for q in item if q.extra["role"] == ANSWER}
    truth = item[0].extra["ground_truth_time"]
    for probe in probes:
        response = responses.get(probe.id)
        if response is None:
            return False, False, True  # the dialogue cannot be replayed past a missing turn
        if "yes" not in response.strip().lower():
            continue
        if abs(probe.ask_time - truth) > ON_TIME_S:
            return False, False, False
        answer = responses.get(answers[probe.ask_time].id)
        right = answer is not None and item[0].extra["ground_truth_output"] in answer
        return True, right, answer is None
    return False, False, False


def _breakdown(pairs) -> dict[str, dict]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, right in pairs:
        counts[key][0] += right
        counts[key][1] += 1
    return {key: {"score": _percent(right, n), "n": n} for key, (right, n) in counts.items()}


def _percent(right: int, total: int) -> float:
    return round(100.0 * right / total, 2) if total else 0.0
