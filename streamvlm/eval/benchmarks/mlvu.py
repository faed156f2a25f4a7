"""MLVU (dev): multi-task long-video understanding, asked offline after the whole video.

Official files (github JUNJIE99/MLVU ``data/``; the Hugging Face dataset ``MLVU/MVLU`` ships
the same files under ``MLVU/json/``): one JSON list per task, ``1_plotQA.json`` ...
``9_summary.json``, each item ``{"video", "duration", "question", "candidates", "answer",
"question_type"}`` with the answer given as the candidate's *text*. Tasks 1-7 are multiple
choice and make M-Avg, the mean of the seven task accuracies; tasks 8 (sub-scene
captioning, with ``scoring_points``) and 9 (summary) are generation tasks that the paper
scores with a GPT-4 judge (G-Avg). They are loaded as open questions; ``score`` judges them
when a judge is set (``MLVU.judge``, which the CLI sets from ``--judge-url`` and
``--judge-model``) and reports them as not scored otherwise.

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

Generation tasks (``evaluation/generation_evaluation/evaluate_ssc.py``,
``evaluate_summary.py``, ``calculate.py``, ``calculate_sum.py``): the judge is sent the
official system and user messages (their wording; the official triple-quoted strings also
carry the source file's indentation, left out here); each of the two scores is read from the
reply as they read it: the text after the first occurrence of the score's key, from two
characters past the next ":" up to the next ",", as a float; a key the reply lacks is
skipped, so the scores that were found fill the first places (a reply with only
``score_relevance`` counts it as the accuracy). A task's two scores are means over all its
questions (a score not found counts 0), its total their sum (out of 10); G-Avg is the mean
of the two tasks' totals, as the MLVU leaderboard reports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import StreamVLMError
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

# The generation tasks' judge prompts (generation_evaluation/evaluate_ssc.py and
# evaluate_summary.py, sent to gpt-4-turbo at temperature 0) and the two scores each reply
# is read for, in their order.
SSC_SYSTEM = "\n".join(
    (
        "##TASK DESCRIPTION: ",
        "You are required to evaluate a respondent's answer based on a provided question, some scoring points, and the respondent's answer. You should provide two scores. The first is the accuracy score, which should range from 1 to 5. The second is the relevance score, which should also range from 1 to 5. Below are the criteria for each scoring category.",
        "##ACCURACY Scoring Criteria: ",
        "Evaluate the respondent's answer against specific scoring points as follows:",
        "Score 1: The response completely misses the scoring point.",
        "Score 3: The response mentions content related to the scoring point but is not entirely correct.",
        "Score 5: The response accurately addresses the scoring point.",
        "Calculate the average score across all scoring points to determine the final accuracy score.",
        "##RELEVANCE Scoring Criteria:",
        "Assess how the respondent's answer relates to the original question:",
        "Score 1: The response is completely off-topic from the question.",
        "Score 2: The response is partially related to the question but contains a significant amount of irrelevant content.",
        "Score 3: The response primarily addresses the question, but the respondent seems uncertain about their own answer.",
        "Score 4: The response mostly addresses the question and the respondent appears confident in their answer.",
        "Score 5: The response is fully focused on addressing the question with no irrelevant content and demonstrates complete certainty.",
        "----",
        "##INSTRUCTION:",
        "1. Evaluate Accuracy: First, assess and score each scoring point based on the respondent's answer. Calculate the average of these scores to establish the final accuracy score. Provide a detailed rationale before assigning your score.",
        "2. Evaluate RELEVANCE: Assess the relevance of the respondent\u2019s answer to the question. Note that when evaluating relevance, the correctness of the answer is not considered; focus solely on how relevant the answer is to the question. Provide a comprehensive rationale before assigning your score.",
        "3. Output Scores in JSON Format: Present the scores in JSON format as follows:",
        "{'score_accuracy': score_acc, 'score_relevance': score_rele, 'total_score': score_acc + score_rele}",
    )
)
SSC_USER = (
    "Please score the respondent's answer according to the steps in the Instructions. "
    "You must end with a JSON dict to store the scores.\n"
    "Question: {question}\nScoring Points: {scoring_points}\nRespondent's Answer: {response}"
)
SUMMARY_SYSTEM = "\n".join(
    (
        "##TASK DESCRIPTION: ",
        "You are required to evaluate the performance of the respondent in the video summarization task based on the standard answer and the respondent's answer. You should provide two scores. The first is the COMPLETENESS score, which should range from 1 to 5. The second is the RELIABILITY score, which should also range from 1 to 5. Below are the criteria for each scoring category:",
        "##COMPLETENESS Scoring Criteria:",
        "The completeness score focuses on whether the summary covers all key points and main information from the video. ",
        "Score 1: The summary hardly covers any of the main content or key points of the video.",
        "Score 2: The summary covers some of the main content and key points but misses many.",
        "Score 3: The summary covers most of the main content and key points.",
        "Score 4: The summary is very comprehensive, covering most to nearly all of the main content and key points.",
        "Score 5: The summary completely covers all the main content and key points of the video.",
        "##RELIABILITY Scoring Criteria:",
        "The reliability score evaluates the correctness and clarity of the video summary. It checks for factual errors, misleading statements, and contradictions with the video content. If the respondent's answer includes details that are not present in the standard answer, as long as these details do not conflict with the correct answer and are reasonable, points should not be deducted.",
        "Score 1: Contains multiple factual errors and contradictions; presentation is confusing.",
        "Score 2: Includes several errors and some contradictions; needs clearer presentation.",
        "Score 3: Generally accurate with minor errors; minimal contradictions; reasonably clear presentation.",
        "Score 4: Very accurate with negligible inaccuracies; no contradictions; clear and fluent presentation.",
        "Score 5: Completely accurate with no errors or contradictions; presentation is clear and easy to understand.",
        "----",
        "##INSTRUCTION:",
        "1. Evaluate COMPLETENESS: First, analyze the respondent's answer according to the scoring criteria, then provide an integer score between 1 and 5 based on sufficient evidence. ",
        "2. Evaluate RELIABILITY: First, analyze the respondent's answer according to the scoring criteria, then provide an integer score between 1 and 5 based on sufficient evidence. ",
        "3. Output Scores in JSON Format: Present the scores in JSON format as follows:",
        "{'score_completeness': score_comp, 'score_reliability': score_reli, 'total_score': score_comp + score_reli}",
    )
)
SUMMARY_USER = (
    "Please score the respondent's answer according to the steps in the Instructions. "
    "You must end with a JSON dict to store the scores.\n"
    "Standard Answer: {answer}\nRespondent's Answer: {response}"
)
JUDGE_SCORES = {"subPlot": ("accuracy", "relevance"), "summary": ("completeness", "reliability")}
# recorded beside judged scores, with the judge's model; bump the version when the wording changes
JUDGE_PROMPT = "mlvu-generation"
JUDGE_PROMPT_VERSION = "mlvu-2024"
JUDGE_ATTEMPTS = 3  # the official loop asks again until a reply comes; this gives up after 3


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
    # an LLM judge for the generation tasks (anything with ``complete(messages) -> str`` and
    # ``describe() -> dict``, e.g. ``judge.Judge``); None: they are reported as not scored
    judge = None
    # generation_evaluation/*.py call gpt-4-turbo at temperature 0
    judge_temperature = 0.0

    def __init__(self, judge=None):
        self.judge = judge

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
                    if not isinstance(item["scoring_points"], list):
                        raise AnnotationError(f"{where}: 'scoring_points' must be a list of texts")
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
        """M-Avg with ``per_task``; with a judge, also ``g_avg`` and ``per_generation_task``
        (else the generation tasks' counts under ``not_scored``)."""
        correct: dict[str, list[bool]] = {}
        missing = 0
        for question in questions:
            if question.kind == OPEN:
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
        open_questions = [q for q in questions if q.kind == OPEN]
        judged = [q for q in open_questions if q.task in JUDGE_SCORES] if self.judge is not None else []
        if judged:
            result.update(self._judge_generation(judged, responses))
            result["missing"] += sum(responses.get(q.id) is None for q in judged)
        judged_ids = {q.id for q in judged}
        not_scored: dict[str, int] = {}
        for question in open_questions:
            if question.id not in judged_ids:
                not_scored[question.task] = not_scored.get(question.task, 0) + 1
        if not_scored:
            result["not_scored"] = {
                "tasks": not_scored,
                "reason": "generation tasks (G-Avg) are scored by an LLM judge: pass --judge-url and "
                "--judge-model",
            }
        return result

    def _judge_generation(self, questions: Sequence[BenchQuestion], responses: Mapping[str, str]) -> dict:
        """G-Avg and each generation task's two judged scores (module docstring). A question
        without a response is not sent and scores 0; ``judge_unread`` counts the replies a
        score could not be read from (that score counts 0, as officially)."""
        sums: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        unread = 0
        for question in questions:
            task_sums = sums.setdefault(question.task, [0.0, 0.0])
            counts[question.task] = counts.get(question.task, 0) + 1
            response = responses.get(question.id)
            if response is None:
                continue
            reply = _ask_judge(self.judge, judge_messages(question, response))
            scores = read_judge_scores(reply, tuple(f"score_{name}" for name in JUDGE_SCORES[question.task]))
            unread += len(scores) < 2
            for place, value in enumerate(scores[:2]):
                task_sums[place] += value
        per_task, totals = {}, []
        for task in sorted(sums, key=_task_order):
            first, second = (total / counts[task] for total in sums[task])
            totals.append(first + second)
            names = JUDGE_SCORES[task]
            per_task[task] = {
                names[0]: round(first, 2),
                names[1]: round(second, 2),
                "score": round(first + second, 2),
                "n": counts[task],
            }
        describe = getattr(self.judge, "describe", dict)
        return {
            "g_avg": round(mean(totals), 2),
            "per_generation_task": per_task,
            "judge_unread": unread,
            "judge": {**describe(), "prompt": JUDGE_PROMPT, "prompt_version": JUDGE_PROMPT_VERSION},
        }

    def baseline_response(self, question: BenchQuestion) -> str:
        """The constant baseline: "A" for multiple choice; "" for the generation tasks (judged
        like any answer when a judge is set)."""
        return "" if question.kind == OPEN else super().baseline_response(question)


class GenerationJudgeError(StreamVLMError):
    """The judge of MLVU's generation tasks could not be asked."""


def judge_messages(question: BenchQuestion, response: str) -> list[dict]:
    """The official judge messages for one generation question (sub-scene or summary)."""
    if question.task == "subPlot":
        # evaluate_ssc.py drops the question's newlines; its scoring points print as a list
        user = SSC_USER.format(
            question=question.question.replace("\n", ""),
            scoring_points=list(question.extra.get("scoring_points", [])),
            response=response,
        )
        return [{"role": "system", "content": SSC_SYSTEM}, {"role": "user", "content": user}]
    user = SUMMARY_USER.format(answer=question.answer, response=response)
    return [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]


def read_judge_scores(reply: str, keys: Sequence[str]) -> list[float]:
    """The scores read from a judge reply as calculate.py reads them: for each key found,
    the text from two characters past the next ":" to the next ","; a key not found (or a
    number that is not one, where the official script would stop) is skipped."""
    scores = []
    for key in keys:
        at = reply.find(key)
        if at == -1:
            continue
        start = reply.find(":", at) + 2
        try:
            scores.append(float(reply[start : reply.find(",", start)]))
        except ValueError:
            continue
    return scores


def _ask_judge(judge, messages: list[dict]) -> str:
    """The judge's reply, asked again after a failed request (the official loop retries)."""
    failure: Exception | None = None
    for _ in range(JUDGE_ATTEMPTS):
        try:
            return judge.complete(messages)
        except StreamVLMError:
            raise  # the judge's own one-line errors (refused, not OpenAI-compatible)
        except Exception as exc:  # a failed request (timeout, refused connection, HTTP 5xx)
            failure = exc
    raise GenerationJudgeError(
        f"the MLVU judge failed {JUDGE_ATTEMPTS} times ({failure}); check --judge-url and that the server is up"
    )


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
