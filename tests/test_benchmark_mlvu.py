"""MLVU dev adapter: the loader, the prompt, the official answer parsing and M-Avg, on
hand-written files in the official format (tests/data/benchmarks/mlvu/MLVU/json/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvlm.eval.benchmarks import AnnotationError, get_benchmark
from streamvlm.eval.benchmarks.base import CHOICE, OPEN, read_predictions
from streamvlm.eval.benchmarks.mlvu import (
    MLVU,
    GenerationJudgeError,
    answer_letter,
    parse_choice,
    read_judge_scores,
)

DATA = Path(__file__).parent / "data" / "benchmarks" / "mlvu"
JSON_DIR = DATA / "MLVU" / "json"


@pytest.fixture(scope="module")
def mlvu() -> MLVU:
    return get_benchmark("mlvu")


@pytest.fixture(scope="module")
def questions(mlvu):
    return mlvu.load(mlvu.default_annotations(DATA))


def by_id(questions):
    return {q.id: q for q in questions}


def test_default_annotations_are_the_nine_task_files_in_order(mlvu):
    names = [path.name for path in mlvu.default_annotations(DATA)]
    assert names == [
        "1_plotQA.json",
        "2_needle.json",
        "3_ego.json",
        "4_count.json",
        "5_order.json",
        "6_anomaly_reco.json",
        "7_topic_reasoning.json",
        "8_sub_scene.json",
        "9_summary.json",
    ]


def test_loader_ids_videos_kinds_and_offline_ask_time(questions):
    assert [q.id for q in questions] == [
        "plotQA_0",
        "plotQA_1",
        "needle_0",
        "needle_1",
        "ego_0",
        "count_0",
        "order_0",
        "anomaly_reco_0",
        "topic_reasoning_0",
        "subPlot_0",
        "summary_0",
    ]
    assert all(q.ask_time is None and q.context_start == 0.0 for q in questions)
    assert [q.kind for q in questions] == [CHOICE] * 9 + [OPEN] * 2
    # videos live under video/<the json's stem>/, as in the Hugging Face dataset
    q = by_id(questions)
    assert q["plotQA_0"].video == "MLVU/video/1_plotQA/cartoon_fox_3.mp4"
    assert q["subPlot_0"].video == "MLVU/video/8_sub_scene/subPlot_new_all_5.mp4"


def test_answers_are_letters_by_the_official_last_match_rule(questions):
    q = by_id(questions)
    # "Red" is candidate 0 and candidate 2: the official loop keeps the last, C
    assert q["plotQA_0"].options == ("Red", "Blue", "Red", "Green")
    assert q["plotQA_0"].answer == "C"
    assert q["plotQA_1"].answer == "C"
    # an answer that is no candidate (published so in 2_needle.json) gets "@", never matched
    assert q["needle_0"].answer == "@"
    assert q["needle_1"].answer == "B"
    assert q["count_0"].options == ("3", "1", "4", "2") and q["count_0"].answer == "C"
    assert [q[i].answer for i in ("ego_0", "order_0", "anomaly_reco_0", "topic_reasoning_0")] == list("ADAB")
    assert q["needle_0"].extra["answer_text"] == "Holding a lantern above his head"


def test_tasks_from_question_type_or_file_name_and_durations(questions):
    q = by_id(questions)
    assert q["needle_1"].task == "needle"  # question_type "findNeedle"
    assert q["ego_0"].task == "ego"  # no question_type: from 3_ego.json
    assert q["plotQA_0"].extra["duration"] == 300.0  # published as an int
    assert q["needle_1"].extra["duration"] == 615.2  # as a string
    assert q["subPlot_0"].extra["scoring_points"][2] == "Pigeons fly out of the yard"
    assert q["summary_0"].answer.startswith("A baker opens her shop")


def test_prompts(mlvu, questions):
    q = by_id(questions)
    assert mlvu.prompt(q["count_0"]) == (
        "Carefully watch this video and pay attention to every detail. Based on your observations, "
        "select the best option that accurately addresses the question.\n"
        "Question: How many times does the scene of the 'juggling balls' action appear in this video?\n"
        "Options:\n(A) 3\n(B) 1\n(C) 4\n(D) 2\n"
        "Only give the best option.\n"
        "Best Option: ("
    )
    assert mlvu.prompt(q["summary_0"]) == (
        "Carefully watch this video and pay attention to every detail. Based on your observations, "
        "answer the given questions.\nPlease summarize this video, including its main content."
    )


@pytest.mark.parametrize(
    "response, letter",
    [
        ("B", "B"),
        ("B) A boat", "B"),  # the model completes "Best Option: ("
        ("(C) A dog", "C"),
        ("  D) x \n", "D"),  # stripped first
        ("A.", "A."),  # no ")": the whole response must be the letter
        ("The answer is A", "The answer is A"),
        (") A", ""),
        ("I pick (B) and (C)", "B"),  # the first ")"
    ],
)
def test_parse_choice_follows_the_official_check_ans(response, letter):
    assert parse_choice(response) == letter


def test_answer_letter():
    assert answer_letter(["x", "y", "x"], "x") == "C"
    assert answer_letter(["x", "y"], "z") == "@"


def test_score_on_the_fixture_predictions(mlvu, questions):
    # plotQA:  "A) Red" -> A, truth C (last "Red") wrong; "C" right           -> 1/2 = 50.0
    # needle:  "A" vs "@" wrong; "B) Painting" right                          -> 1/2 = 50.0
    # ego:     "A." is not "A" (no ")")                                       -> 0/1 = 0.0
    # count:   " C) 4\n" -> C right                                            -> 1/1 = 100.0
    # order:   no response: wrong, missing = 1                                 -> 0/1 = 0.0
    # anomaly: "The answer is A" is not "A"                                    -> 0/1 = 0.0
    # topic:   "B" right                                                       -> 1/1 = 100.0
    # M-Avg = (50 + 50 + 0 + 100 + 0 + 0 + 100) / 7 = 300 / 7 = 42.857 -> 42.86
    result = mlvu.score(questions, read_predictions(DATA / "predictions.jsonl"))
    assert result["metric"] == 42.86
    assert result["metric_name"] == "M-Avg"
    assert result["questions"] == 9
    assert result["missing"] == 1
    assert result["per_task"] == {
        "plotQA": {"score": 50.0, "n": 2},
        "needle": {"score": 50.0, "n": 2},
        "ego": {"score": 0.0, "n": 1},
        "count": {"score": 100.0, "n": 1},
        "order": {"score": 0.0, "n": 1},
        "anomaly_reco": {"score": 0.0, "n": 1},
        "topic_reasoning": {"score": 100.0, "n": 1},
    }
    # the generation tasks are loaded but not scored (no GPT judge), not counted as missing
    assert result["not_scored"]["tasks"] == {"subPlot": 1, "summary": 1}
    json.dumps(result)


def test_constant_baseline_on_the_fixture(mlvu, questions):
    # "A" for every choice question: right only where the truth is A: ego_0 and anomaly_reco_0
    # (plotQA_0's first "Red" is A, but the official truth is C). Tasks: plotQA 0, needle 0,
    # ego 100, count 0, order 0, anomaly 100, topic 0 -> M-Avg = 200 / 7 = 28.571 -> 28.57
    responses = {q.id: mlvu.baseline_response(q) for q in questions}
    assert responses["subPlot_0"] == "" and responses["ego_0"] == "A"
    result = mlvu.score(questions, responses)
    assert result["metric"] == 28.57
    assert result["missing"] == 0
    assert result["per_task"]["ego"] == {"score": 100.0, "n": 1}
    assert result["per_task"]["anomaly_reco"] == {"score": 100.0, "n": 1}
    assert result["per_task"]["plotQA"] == {"score": 0.0, "n": 2}


def test_m_avg_is_over_the_tasks_present(mlvu, questions):
    # only the count file: M-Avg is count's accuracy; no generation task, no not_scored key
    count = [q for q in questions if q.task == "count"]
    result = mlvu.score(count, {"count_0": "C"})
    assert result["metric"] == 100.0 and "not_scored" not in result


def write(tmp_path: Path, name: str, items) -> Path:
    path = tmp_path / name
    path.write_text(items if isinstance(items, str) else json.dumps(items), encoding="utf-8")
    return path


GOOD = {"video": "v.mp4", "duration": 10, "question": "Q?", "candidates": ["a", "b"], "answer": "a"}


@pytest.mark.parametrize(
    "name, items, message",
    [
        ("1_plotQA.json", "not json", "1_plotQA.json is not JSON"),
        ("1_plotQA.json", {"video": "v.mp4"}, "expected a JSON list"),
        ("1_plotQA.json", [GOOD, "x"], "item 1: not a JSON object"),
        ("1_plotQA.json", [{**GOOD, "question": None}], "item 0: 'question' must be text"),
        ("1_plotQA.json", [{k: v for k, v in GOOD.items() if k != "answer"}], "item 0: no 'answer' field"),
        ("1_plotQA.json", [{k: v for k, v in GOOD.items() if k != "candidates"}], "no 'candidates'"),
        ("1_plotQA.json", [{**GOOD, "candidates": "a, b"}], "item 0: 'candidates' must be a list"),
        ("1_plotQA.json", [{**GOOD, "duration": "ten"}], "item 0: 'duration' must be seconds"),
        ("8_sub_scene.json", [{**GOOD, "scoring_points": "a; b"}], "item 0: 'scoring_points' must be a list"),
        ("mine.json", [GOOD], "no question_type, and mine.json is none of MLVU's task files"),
    ],
)
def test_malformed_files_name_file_item_and_field(mlvu, tmp_path, name, items, message):
    with pytest.raises(AnnotationError, match=message.replace("(", r"\(")) as caught:
        mlvu.load([write(tmp_path, name, items)])
    assert "\n" not in str(caught.value)


def test_missing_file_and_data_dir(mlvu, tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        mlvu.load([tmp_path / "1_plotQA.json"])
    with pytest.raises(AnnotationError, match="pass --annotations"):
        mlvu.default_annotations(tmp_path)


def test_unknown_question_type_is_kept_as_its_own_task(mlvu, tmp_path):
    path = write(tmp_path, "extra.json", [{**GOOD, "question_type": "newTask"}])
    (question,) = mlvu.load([path])
    assert (question.id, question.task, question.kind, question.answer) == (
        "newTask_0",
        "newTask",
        CHOICE,
        "A",
    )


class FakeJudge:
    """A judge that answers from a table (first words of the system message -> reply) and
    records what it was asked; ``fail`` requests fail first with a connection error."""

    def __init__(self, replies, fail=0):
        self.replies, self.fail, self.asked = replies, fail, []

    def complete(self, messages):
        self.asked.append(messages)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("refused")
        system = messages[0]["content"]
        return next(reply for start, reply in self.replies.items() if start in system)

    def describe(self):
        return {"model": "fake-judge", "prompt": "overridden"}


SSC_REPLY = "Two points are met. {'score_accuracy': 3.5, 'score_relevance': 4, 'total_score': 7.5}"
SUMMARY_REPLY = "{'score_completeness': 2, 'score_reliability': 3, 'total_score': 5}"
REPLIES = {"a provided question, some scoring points": SSC_REPLY, "video summarization task": SUMMARY_REPLY}


def test_generation_tasks_judged_into_g_avg(questions):
    # subPlot_0 judged: accuracy 3.5, relevance 4 -> total 7.5 (n = 1)
    # summary_0 has no response: not sent, scores 0 + 0 = 0, missing
    # G-Avg = (7.5 + 0) / 2 = 3.75; M-Avg unchanged (42.86); missing = order_0 + summary_0 = 2
    judge = FakeJudge(REPLIES)
    result = MLVU(judge=judge).score(questions, read_predictions(DATA / "predictions.jsonl"))
    assert result["metric"] == 42.86
    assert result["g_avg"] == 3.75
    assert result["per_generation_task"] == {
        "subPlot": {"accuracy": 3.5, "relevance": 4.0, "score": 7.5, "n": 1},
        "summary": {"completeness": 0.0, "reliability": 0.0, "score": 0.0, "n": 1},
    }
    assert result["missing"] == 2 and result["judge_unread"] == 0 and "not_scored" not in result
    assert result["judge"] == {
        "model": "fake-judge",
        "prompt": "mlvu-generation",
        "prompt_version": "mlvu-2024",
    }
    (messages,) = judge.asked
    assert messages[0]["content"].startswith(
        "##TASK DESCRIPTION: \nYou are required to evaluate a respondent's"
    )
    assert messages[1]["content"] == (
        "Please score the respondent's answer according to the steps in the Instructions. You must end "
        "with a JSON dict to store the scores.\n"
        "Question: Please describe the scene when the girl in the yellow coat opens the old gate.\n"
        "Scoring Points: ['The girl pushes the gate open', 'The gate is rusty', 'Pigeons fly out of the yard']\n"
        "Respondent's Answer: The girl opens the gate and birds fly away."
    )


def test_constant_baseline_with_a_judge_sends_empty_answers(questions):
    # "" for both generation questions: SSC 3.5 + 4 = 7.5, summary 2 + 3 = 5 -> G-Avg 6.25
    mlvu = MLVU(judge=FakeJudge(REPLIES))
    result = mlvu.score(questions, {q.id: mlvu.baseline_response(q) for q in questions})
    assert (result["metric"], result["g_avg"], result["missing"]) == (28.57, 6.25, 0)
    assert "Standard Answer: A baker opens her shop" in mlvu.judge.asked[1][1]["content"]


@pytest.mark.parametrize(
    "reply, scores",
    [
        ("{'score_accuracy': 3.5, 'score_relevance': 4, 'total_score': 7.5}", [3.5, 4.0]),
        ("score_accuracy: 5, score_relevance: 2, total: 7", [5.0, 2.0]),
        ("{'score_accuracy': 4, 'score_relevance': 4.5}", [4.0, 4.5]),  # no "," after: up to the last char
        ("{'score_relevance': 4, 'total_score': 4}", [4.0]),  # found scores fill the first places
        # the number after the *next* ":", wherever it is
        ("the score_accuracy is high, score_relevance: 3, x", [3.0, 3.0]),
        ("score_accuracy: high, score_relevance: 3, x", [3.0]),  # not a number: skipped
        ("no scores at all", []),
    ],
)
def test_read_judge_scores_as_calculate_py(reply, scores):
    assert read_judge_scores(reply, ("score_accuracy", "score_relevance")) == scores


def test_an_unread_score_counts_zero(questions):
    # the reply lacks score_accuracy: its relevance 4 fills the first place (accuracy), 0 second
    judge = FakeJudge({"a provided question": "{'score_relevance': 4, 'total_score': 4}", "summariz": "x"})
    subplot = [q for q in questions if q.task == "subPlot"]
    result = MLVU(judge=judge).score(subplot, {"subPlot_0": "an answer"})
    assert result["per_generation_task"]["subPlot"] == {
        "accuracy": 4.0,
        "relevance": 0.0,
        "score": 4.0,
        "n": 1,
    }
    assert result["judge_unread"] == 1 and result["g_avg"] == 4.0


def test_failed_judge_requests_are_asked_again_then_reported(questions):
    subplot = [q for q in questions if q.task == "subPlot"]
    judge = FakeJudge(REPLIES, fail=2)
    assert MLVU(judge=judge).score(subplot, {"subPlot_0": "x"})["g_avg"] == 7.5
    assert len(judge.asked) == 3
    with pytest.raises(GenerationJudgeError, match="failed 3 times"):
        MLVU(judge=FakeJudge(REPLIES, fail=3)).score(subplot, {"subPlot_0": "x"})
