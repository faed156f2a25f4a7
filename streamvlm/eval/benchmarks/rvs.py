"""RVS-Ego and RVS-Movie (Flash-VStream's VStream-QA, realtime split): open-ended questions
asked at the end of their evidence window, scored by an LLM judge.

RVS-Ego (99 Ego4D videos, 1465 questions) and RVS-Movie (1000 MovieNet clips, 1905
questions) were published with Flash-VStream (arXiv 2406.08085,
huggingface.co/datasets/IVGSZ/VStream-QA, ``vstream-realtime/``). Each question names the
window ``[start_time, end_time]`` (seconds into its video) that holds the evidence, and is
asked at ``end_time``: the model may see the stream up to there, never after.

Two layouts of the annotations are published, and ``load`` reads both:

- **VStream-QA** (``test_qa_ego4d.json`` / ``test_qa_movienet.json``, read by Flash-VStream's
  ``inference_mcq_vqa.py``): a list of questions, each with ``id``, ``video_id``,
  ``question``, ``answer``, ``start_time``, ``end_time`` and optionally ``answer_type`` (the
  breakdown key of Flash-VStream's score) and ``duration``. The video is the clip the
  dataset card tells users to cut and save as ``<video_id>.mp4``: ``videos/<video_id>.mp4``
  under the data directory.
- **ReKV** (``ego4d_oe.json`` / ``movienet_oe.json``, huggingface.co/datasets/Becomebright/RVS,
  read by ReKV's ``video_qa/rekv_stream_vqa.py``): a list of videos, each with
  ``video_id``, ``video_path`` and ``conversations``, a list of ``question``, ``answer``,
  ``start_time``, ``end_time``. There is no question id; ReKV's scorer keys question ``k``
  of a video as ``<video_id>_<k>``, and so do we.

Times may be numbers or strings ("754", "754.5", "00:12:34"). Extra keys are kept in
``BenchQuestion.extra``.

The question is worded as Flash-VStream's ``inference_mcq_vqa.py`` (Flash-VStream-Qwen)
words open-ended questions: ``"Answer the following open-ended question based on the
video. " + question`` (ReKV sends the bare question inside its chat template).

Scoring (``score``) follows Flash-VStream's ``eval_activitynet_qa.py``, which both RVS
subsets are scored by: each prediction is judged by an LLM (``judge.Judge``, the official
correctness prompt); accuracy is the share of judged questions whose ``pred`` contains
"yes", the score the mean of ``int(score)`` (0-5); the breakdown is per ``answer_type``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import OPEN, AnnotationError, Benchmark, BenchQuestion, load_json, mean
from .judge import Judge, Verdict

# Flash-VStream-Qwen/inference_mcq_vqa.py: the prefix of every open-ended question
OPEN_ENDED_PREFIX = "Answer the following open-ended question based on the video. "

# the constant baseline's answer: a fixed non-answer, judged like any prediction (see
# RVSBenchmark.baseline_response)
CONSTANT_ANSWER = "I don't know."

NO_JUDGE = "open-ended RVS needs a judge: pass --judge-url URL --judge-model NAME"

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


class RVSBenchmark(Benchmark):
    """What RVS-Ego and RVS-Movie share: the loader, the prompt and the judged score.

    ``judge`` (a ``judge.Judge``) must be set before ``score``; the CLI sets it from
    ``--judge-url`` and ``--judge-model``.
    """

    metric_name = "accuracy (judged yes, %)"
    # ReKV streams RVS at 0.5 fps (README: --sample_fps 0.5); Flash-VStream at 1 fps
    default_fps = 0.5
    judge: Judge | None = None

    def __init__(self, judge: Judge | None = None):
        self.judge = judge

    # -- loading -------------------------------------------------------------------------

    def load(self, annotations: Sequence[str | Path]) -> list[BenchQuestion]:
        questions: list[BenchQuestion] = []
        seen: Counter[str] = Counter()
        for path in annotations:
            data = load_json(path)
            if not isinstance(data, list):
                raise AnnotationError(
                    f"{path}: the top level is {type(data).__name__}, not a list; pass the official "
                    f"{' or '.join(self.annotation_files[:2])}"
                )
            for index, item in enumerate(data):
                where = f"{path}: item {index}"
                if not isinstance(item, dict):
                    raise AnnotationError(f"{where} is {type(item).__name__}, not an object")
                if "conversations" in item:
                    questions += _video_questions(item, where, seen)
                else:
                    questions.append(_flat_question(item, where, seen))
        return questions

    def default_annotations(self, data_dir: str | Path) -> list[Path]:
        """The first of ``annotation_files`` inside ``data_dir``: both layouts hold every
        question, so reading two would ask each twice."""
        return super().default_annotations(data_dir)[:1]

    def video_path(self, data_dir: str | Path, question: BenchQuestion) -> Path:
        """The video as the annotations name it under ``data_dir``, else its file name in
        ``data_dir/videos`` (ReKV's ``video_path`` is relative to ReKV's checkout, e.g.
        ``data/rvs/ego/videos/<name>.mp4``, while ``--data`` is the folder holding the
        annotations)."""
        data_dir = Path(data_dir)
        named = data_dir / question.video
        for candidate in (named, data_dir / "videos" / Path(question.video).name):
            if candidate.exists():
                return candidate
        return named

    # -- asking --------------------------------------------------------------------------

    def prompt(self, question: BenchQuestion) -> str:
        return OPEN_ENDED_PREFIX + question.question

    def baseline_response(self, question: BenchQuestion) -> str:
        """The constant baseline of an open-ended benchmark: the same non-answer
        (``CONSTANT_ANSWER``) to every question, sent to the judge like any prediction, so
        the baseline checks the judge end to end and shows what a judge grants an empty
        answer (ideally 0)."""
        return CONSTANT_ANSWER

    # -- scoring -------------------------------------------------------------------------

    def score(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        """Judged accuracy (%) and mean score (0-5), overall and per ``answer_type``.

        A question without a response is wrong (judged "no", score 0, not sent to the
        judge) and counted in ``missing``. A question whose judge reply never came in the
        judge format is left out of the means, as the official script leaves it out, and
        counted in ``judge_failures`` (its id in ``judge_failed_ids``).
        """
        answered = [q for q in questions if q.id in responses]
        if self.judge is not None:
            judged = self.judge.judge_all([(q.question, q.answer, responses[q.id]) for q in answered])
        elif answered and all(responses[q.id] == CONSTANT_ANSWER for q in answered):
            # the constant baseline without a judge: its fixed non-answer states nothing, so
            # it is scored "no", 0, as a judge following the prompt scores it
            judged = [Verdict(pred="no", score=0, reply="(constant baseline, not sent to a judge)")] * len(
                answered
            )
        else:
            raise AnnotationError(NO_JUDGE)
        verdicts: dict[str, Verdict] = {q.id: Verdict(pred="no", score=0) for q in questions}
        verdicts.update(zip((q.id for q in answered), judged, strict=True))
        missing = len(questions) - len(answered)
        failed = [q.id for q in questions if not verdicts[q.id].ok]
        overall = _tally(verdicts[q.id] for q in questions)
        per_task: dict[str, dict] = {}
        for task in dict.fromkeys(q.task for q in questions if q.task):
            per_task[task] = _tally(verdicts[q.id] for q in questions if q.task == task)
        return {
            "metric": overall["score"],
            "metric_name": self.metric_name,
            "questions": len(questions),
            "missing": missing,
            "judged": overall["n"],
            "judge_failures": len(failed),
            "judge_failed_ids": failed,
            "accuracy": overall["score"],
            "mean_score": overall["mean_score"],
            "yes": overall["yes"],
            "no": overall["no"],
            "score_distribution": overall["distribution"],
            "per_task": {
                task: {"score": t["score"], "mean_score": t["mean_score"], "n": t["n"]}
                for task, t in per_task.items()
            },
            "judge": self.judge.describe() if self.judge is not None else None,
        }


class RVSEgo(RVSBenchmark):
    """RVS-Ego: egocentric Ego4D streams, 1465 open-ended questions (99 videos on the VStream-QA card)."""

    name = "rvs-ego"
    annotation_files = (
        "test_qa_ego4d.json",
        "vstream-realtime/test_qa_ego4d.json",
        "ego4d_oe.json",
        "ego/ego4d_oe.json",
    )


class RVSMovie(RVSBenchmark):
    """RVS-Movie: MovieNet films, 1905 open-ended questions (1000 videos on the VStream-QA card)."""

    name = "rvs-movie"
    annotation_files = (
        "test_qa_movienet.json",
        "vstream-realtime/test_qa_movienet.json",
        "movienet_oe.json",
        "movie/movienet_oe.json",
    )


def _tally(verdicts) -> dict:
    """Flash-VStream's ScoreMeter over the verdicts that parsed: the share whose label
    holds "yes" (percent, the official 6 decimals of a fraction), the mean integer score,
    the yes/no counts and the score distribution of each."""
    judged = [v for v in verdicts if v.ok]
    yes = sum(v.pred == "yes" for v in judged)
    no = sum(v.pred == "no" for v in judged)
    distribution: dict[str, dict[str, int]] = {"yes": {}, "no": {}}
    for v in judged:
        if v.pred:
            counts = distribution[v.pred]
            counts[str(v.score)] = counts.get(str(v.score), 0) + 1
    return {
        "n": len(judged),
        "score": round(100 * yes / len(judged), 4) if judged else 0.0,
        "mean_score": round(mean(v.score for v in judged), 6),
        "yes": yes,
        "no": no,
        "distribution": {label: dict(sorted(c.items())) for label, c in distribution.items()},
    }


def _flat_question(item: dict, where: str, seen: Counter) -> BenchQuestion:
    """One question of the VStream-QA layout (``test_qa_*.json``)."""
    if "id" not in item:
        raise AnnotationError(f"{where}: no 'id' (VStream-QA questions carry one)")
    video_id = _text(item, "video_id", where)
    return _question(
        _unique_id(str(item["id"]), seen),
        f"videos/{video_id}.mp4",
        item,
        where,
        {"video_id": video_id},
        skip=("id", "video_id"),
    )


def _video_questions(video: dict, where: str, seen: Counter) -> list[BenchQuestion]:
    """The questions of one video of the ReKV layout (``*_oe.json``)."""
    video_id = _text(video, "video_id", where)
    path = video.get("video_path") or f"videos/{video_id}.mp4"
    if not isinstance(path, str):
        raise AnnotationError(f"{where}: 'video_path' is {type(path).__name__}, not a path")
    conversations = video["conversations"]
    if not isinstance(conversations, list):
        raise AnnotationError(f"{where}: 'conversations' is {type(conversations).__name__}, not a list")
    shared = {k: v for k, v in video.items() if k not in ("conversations", "video_path")}
    questions = []
    for k, item in enumerate(conversations):
        inner = f"{where} (video {video_id}), conversation {k}"
        if not isinstance(item, dict):
            raise AnnotationError(f"{inner} is {type(item).__name__}, not an object")
        questions.append(
            _question(_unique_id(f"{video_id}_{k}", seen), path, item, inner, dict(shared), skip=())
        )
    return questions


def _question(qid: str, video: str, item: dict, where: str, extra: dict, skip: tuple) -> BenchQuestion:
    start = _seconds(item, "start_time", where)
    end = _seconds(item, "end_time", where)
    if end < start:
        raise AnnotationError(f"{where}: end_time {end:g} is before start_time {start:g}")
    if "answer" not in item or item["answer"] is None:
        raise AnnotationError(f"{where}: no 'answer'")
    answer_type = item.get("answer_type")
    extra.update({k: v for k, v in item.items() if k not in skip + ("question", "answer")})
    extra.update(start_time=start, end_time=end)
    return BenchQuestion(
        id=qid,
        video=video,
        ask_time=end,  # asked at the end of its evidence window
        question=_text(item, "question", where),
        answer=str(item["answer"]).strip(),
        task="" if answer_type in (None, "") else str(answer_type),
        kind=OPEN,
        extra=extra,
    )


def _unique_id(qid: str, seen: Counter) -> str:
    """``qid``, or ``qid_<n>`` for its n-th repeat (Flash-VStream's scorer suffixes
    repeated ids the same way, so a file with repeats still has one key per question)."""
    seen[qid] += 1
    return qid if seen[qid] == 1 else f"{qid}_{seen[qid] - 1}"


def _text(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # numeric video ids ("000246" is a string, 246 may be a number)
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{where}: '{key}' is missing or not text")
    return value.strip()


def _seconds(item: dict, key: str, where: str) -> float:
    """A time field in seconds: a number, a numeric string or "[HH:]MM:SS[.f]"."""
    value = item.get(key)
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        clock = _CLOCK.match(text)
        if clock:
            hours, minutes, secs = clock.groups()
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise AnnotationError(
            f"{where}: '{key}' is {value!r}; it must be seconds (a number, or a string like '754.5' or '00:12:34')"
        )
    return seconds
