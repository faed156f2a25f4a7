"""MLVU dev adapter: the loader, the prompt, the official answer parsing and M-Avg, on
hand-written files in the official format (tests/data/benchmarks/mlvu/MLVU/json/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvlm.eval.benchmarks import AnnotationError, get_benchmark
from streamvlm.eval.benchmarks.base import CHOICE, OPEN, read_predictions
from streamvlm.eval.benchmarks.mlvu import MLVU, answer_letter, parse_choice

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
