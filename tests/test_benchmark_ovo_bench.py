"""OVO-Bench adapter: the loader on a hand-written file in the official ``ovo_bench_new.json``
format, the official prompts, the official answer parsing and the official scores, worked
out by hand on the fixture (tests/data/benchmarks/ovo_bench/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvlm.eval.benchmarks import AnnotationError, get_benchmark
from streamvlm.eval.benchmarks.base import CHOICE, COUNT, YESNO, BenchQuestion, read_predictions
from streamvlm.eval.benchmarks.ovo_bench import OVOBench, is_correct

DATA = Path(__file__).parent / "data" / "benchmarks" / "ovo_bench"
ANNOTATIONS = DATA / "ovo_bench_new.json"
PREDICTIONS = DATA / "predictions.jsonl"


@pytest.fixture(scope="module")
def bench() -> OVOBench:
    return get_benchmark("ovo-bench")


@pytest.fixture(scope="module")
def questions(bench):
    return bench.load([ANNOTATIONS])


def by_id(questions) -> dict[str, BenchQuestion]:
    return {q.id: q for q in questions}


# --- loader -----------------------------------------------------------------------------


def test_registry_names_the_adapter(bench):
    assert isinstance(bench, OVOBench) and bench.name == "ovo-bench"


def test_one_question_per_item_and_one_per_forward_probe_in_file_order(questions):
    # 10 multiple-choice items, CRR 3 probes, SSR 4 probes, REC 3 probes
    assert [q.id for q in questions] == [str(i) for i in range(10)] + [
        "10/0",
        "10/1",
        "10/2",
        "11/0",
        "11/1",
        "11/2",
        "11/3",
        "12/0",
        "12/1",
        "12/2",
    ]


def test_ask_times_are_seconds_whatever_the_number_or_string_form(questions):
    times = {q.id: q.ask_time for q in questions}
    # int 120, string "41.25", float 36.5; probes at their own realtime, SSR's out of order
    assert times["0"] == 120.0 and times["5"] == 41.25 and times["3"] == 36.5 and times["2"] == 200.0
    assert [times[f"11/{i}"] for i in range(4)] == [12.0, 20.0, 8.0, 33.0]
    assert [times[f"12/{i}"] for i in range(3)] == [2.0, 6.0, 12.0]
    assert all(q.context_start == 0.0 for q in questions)  # OVO-Bench asks over the whole history


def test_multiple_choice_fields(questions):
    q = by_id(questions)
    assert q["0"].answer == "C" and q["0"].kind == CHOICE and q["0"].task == "EPM"
    assert q["0"].options == ("on the stove", "in the drawer", "next to the sink", "on the chair")
    assert q["0"].video == "Ego4D/clips/kitchen-0001.mp4"
    assert q["0"].extra["category"] == "Backward Tracing"
    assert q["9"].answer == "E" and len(q["9"].options) == 5
    assert q["4"].extra["category"] == "Real-Time Visual Perception"
    # options that carry their own letters lose them (whatever the letter: "D. Kyiv" is third)
    assert q["8"].options == ("Oslo", "Lima", "Kyiv", "Rome") and q["8"].answer == "A"


def test_forward_probes(questions):
    q = by_id(questions)
    crr = [q[f"10/{i}"] for i in range(3)]
    assert [p.answer for p in crr] == ["No", "No", "Yes"] and {p.kind for p in crr} == {YESNO}
    assert crr[0].question.startswith("The man in the grey hat")
    ssr = [q[f"11/{i}"] for i in range(4)]
    assert [p.answer for p in ssr] == ["Yes", "No", "No", "Yes"]
    assert ssr[2].question == "put soil into the new pot"  # SSR asks about the probe's step
    rec = [q[f"12/{i}"] for i in range(3)]
    assert [p.answer for p in rec] == ["0", "1", "2"] and {p.kind for p in rec} == {COUNT}
    assert rec[0].question == "How many times did they clap their hands?"
    assert rec[1].extra == {"category": "Forward Active Responding", "item": "12", "probe": 1}


def test_video_path_follows_the_official_src_videos_layout(bench, questions, tmp_path):
    q = by_id(questions)["4"]
    # the official layout: DIR/ovo_bench_new.json beside DIR/src_videos/<video>
    official = tmp_path / "src_videos" / "YouTube_Games" / "demo-game&index=2.mp4"
    assert bench.video_path(tmp_path, q) == tmp_path / "YouTube_Games" / "demo-game&index=2.mp4"
    official.parent.mkdir(parents=True)
    official.write_bytes(b"")
    assert bench.video_path(tmp_path, q) == official
    assert bench.default_annotations(DATA) == [ANNOTATIONS]


def test_clock_strings_are_read_as_seconds(bench, tmp_path):
    item = {
        "id": 7,
        "task": "FPD",
        "video": "v.mp4",
        "realtime": "01:28.43",
        "question": "q",
        "options": ["a", "b"],
    }
    item["gt"] = "1"  # a digit string is the same index
    path = tmp_path / "a.json"
    path.write_text(json.dumps([item, {**item, "id": 8, "realtime": "0:01:02"}]))
    loaded = bench.load([path])
    assert loaded[0].ask_time == pytest.approx(88.43) and loaded[1].ask_time == 62.0
    assert loaded[0].answer == "B"


# --- prompts ------------------------------------------------------------------------------


def test_multiple_choice_prompt_is_the_official_template(bench, questions):
    assert bench.prompt(by_id(questions)["3"]) == (
        "\nQuestion: What does the person do after removing the wheel\n"
        "Options:\n"
        "A. take out the inner tube; B. paint the frame; C. oil the chain; D. fit the wheel;\n"
        "\n"
        "Respond only with the letter corresponding to your chosen option (e.g., A, B, C). \n"
        "Do not include any additional text or explanation in your response.\n"
    )


def test_forward_prompts_are_the_official_templates(bench, questions):
    q = by_id(questions)
    assert bench.prompt(q["12/0"]) == (
        "\nYou're watching a video in which people may perform a certain type of action repetively. \n"
        "The person performing this kind of action are referred to as 'they' in the following statement.\n"
        "You're task is to count how many times have different people in the video perform this kind "
        "of action in total.\n"
        "One complete motion counts as one. \n"
        "Now, answer the following question: How many times did they clap their hands?\n"
        "Provide your answer as a single number (e.g., 0, 1, 2, 3\u2026) indicating the total count.\n"
        "Do not include any additional text or explanation in your response.\n"
    )
    assert bench.prompt(q["11/1"]) == (
        "\nYou're watching a tutorial video which contain a sequential of steps. \n"
        "The following is one step from the whole procedures: \n"
        "lift the plant out of the old pot\n"
        "Your task is to determine if the man or woman in the video is currently performing this step.\n"
        "Answer only with \u201cYes\u201d or \u201cNo\u201d.\n"
        "Do not include any additional text or explanation in your response.\n"
    )
    crr = bench.prompt(q["10/2"])
    assert crr.startswith(
        "\nYou're responsible of answering questions based on the video content. \n"
        "The following question are relevant to the latest frames, i.e. the end of the video.\n"
        "The man in the grey hat picks up a letter; what does he do with it?\n"
        "Decide whether existing visual content"
    )
    assert crr.endswith("Answer only with \u201cYes\u201d or \u201cNo\u201d.\n" + crr.splitlines()[-1] + "\n")


# --- answer parsing, as utils/OVOBenchScore.py parses ---------------------------------------


def _question(kind: str, answer: str) -> BenchQuestion:
    task = {CHOICE: "EPM", YESNO: "SSR", COUNT: "REC"}[kind]
    return BenchQuestion(
        id="x", video="v.mp4", ask_time=1.0, question="q", answer=answer, task=task, kind=kind
    )


@pytest.mark.parametrize(
    ("kind", "answer", "response", "right"),
    [
        # multiple choice: case-sensitive "letter in response"
        (CHOICE, "B", "B", 1),
        (CHOICE, "B", "B. a lamp", 1),
        (CHOICE, "B", "The answer is (B)", 1),
        (CHOICE, "B", "b", 0),
        (CHOICE, "A", "Answer: C", 1),  # the "A" of "Answer" counts
        (CHOICE, "C", "", 0),
        (CHOICE, "C", None, 0),  # missing
        # yes/no probes: exactly "Y"/"N", or "Yes"/"No" inside the response
        (YESNO, "Yes", "Yes", 1),
        (YESNO, "Yes", "Y", 1),
        (YESNO, "Yes", "Yes, he is.", 1),
        (YESNO, "Yes", "yes", 0),
        (YESNO, "Yes", " Y", 0),
        (YESNO, "No", "N", 1),
        (YESNO, "No", "Not yet", 1),  # "No" inside "Not"
        (YESNO, "No", "Y", 0),
        (YESNO, "No", None, 0),
        # counts: every digit run, concatenated, equals the count
        (COUNT, "3", "3", 1),
        (COUNT, "3", "They did it 3 times.", 1),
        (COUNT, "10", "10", 1),
        (COUNT, "2", "2 or 3", 0),  # reads as 23
        (COUNT, "0", "0", 1),
        (COUNT, "0", "none", 0),
        (COUNT, "3", "three", 0),
    ],
)
def test_answers_are_parsed_as_the_official_script_parses_them(kind, answer, response, right):
    assert is_correct(_question(kind, answer), response) == right


# --- scores -----------------------------------------------------------------------------


def test_fixture_predictions_score_as_worked_out_by_hand(bench, questions):
    # Per question, right (1) or wrong (0) by the official rules:
    #   EPM 0 "C" for C: 1; EPM 1 "B" for A: 0                 -> EPM 1/2 = 50
    #   HLD 2 "B. Unable to answer" for B: 1                    -> HLD 100
    #   ASI 3 "Answer: C" for A: 1 (the A of "Answer")          -> ASI 100
    #   Backward Tracing = (50 + 100 + 100) / 3 = 83.333        -> 83.33
    #   STU 4 "d" for D: 0; OJR 5 missing: 0; ATR 6 "B": 1; ACR 7 "C" for D: 0;
    #   OCR 8 "A": 1; FPD 9 "E": 1
    #   Real-Time Visual Perception = (0+0+100+0+100+100) / 6   -> 50.00
    #   CRR 10: "No"/No 1, "N"/No 1, "yes"/Yes 0                -> 2/3 = 66.667
    #   SSR 11: "Yes."/Yes 1, "Y"/No 0, "Not yet"/No 1, "No"/Yes 0 -> 2/4 = 50
    #   REC 12: "0"/0 1, "1 time"/1 1, "2 or 3"/2 0 ("23")      -> 2/3 = 66.667
    #   Forward Active Responding = (66.667 + 50 + 66.667) / 3  -> 61.11
    #   overall = (83.333 + 50 + 61.111) / 3 = 64.815           -> 64.81
    result = bench.score(questions, read_predictions(PREDICTIONS))
    assert result["metric"] == 64.81
    assert result["questions"] == 20 and result["missing"] == 1
    assert {c: v["score"] for c, v in result["per_category"].items()} == {
        "Real-Time Visual Perception": 50.0,
        "Backward Tracing": 83.33,
        "Forward Active Responding": 61.11,
    }
    assert {t: (v["score"], v["n"]) for t, v in result["per_task"].items()} == {
        "STU": (0.0, 1),
        "OJR": (0.0, 1),
        "ATR": (100.0, 1),
        "ACR": (0.0, 1),
        "OCR": (100.0, 1),
        "FPD": (100.0, 1),
        "EPM": (50.0, 2),
        "ASI": (100.0, 1),
        "HLD": (100.0, 1),
        "REC": (66.67, 3),
        "SSR": (50.0, 4),
        "CRR": (66.67, 3),
    }
    assert result["per_category"]["Backward Tracing"]["tasks"] == ["EPM", "ASI", "HLD"]
    json.dumps(result)  # the CLI prints it as JSON


def test_constant_baseline_scores_as_worked_out_by_hand(bench, questions):
    # "A" for every choice, "No" for every yes/no probe, "0" for every count:
    #   EPM: C 0, A 1 -> 50; HLD (B) 0; ASI (A) 100      -> Backward (50+0+100)/3 = 50
    #   STU D, OJR B, ATR B, ACR D: 0; OCR A: 100; FPD E: 0 -> Real-time 100/6 = 16.667
    #   CRR types 0,0,1: 1,1,0 -> 66.667; SSR types 1,0,0,1: 0,1,1,0 -> 50;
    #   REC counts 0,1,2: 1,0,0 -> 33.333                  -> Forward (66.667+50+33.333)/3 = 50
    #   overall = (50 + 16.667 + 50) / 3 = 38.889           -> 38.89
    responses = {q.id: bench.baseline_response(q) for q in questions}
    assert {responses["0"], responses["10/0"], responses["12/0"]} == {"A", "No", "0"}
    result = bench.score(questions, responses)
    assert result["metric"] == 38.89 and result["missing"] == 0
    assert {c: v["score"] for c, v in result["per_category"].items()} == {
        "Real-Time Visual Perception": 16.67,
        "Backward Tracing": 50.0,
        "Forward Active Responding": 50.0,
    }
    assert result["per_task"]["REC"]["score"] == 33.33 and result["per_task"]["OCR"]["score"] == 100.0


def test_forward_tasks_weigh_every_probe_alike_and_report_the_item_mean_beside(bench, tmp_path):
    # two REC items: item 1 has one probe (right), item 2 three probes (all wrong).
    # Official (per probe): 1/4 = 25.00. Per item, as some papers average: (1/1 + 0/3) / 2 = 50.00
    items = [
        {
            "id": 1,
            "task": "REC",
            "video": "v.mp4",
            "activity": "jump",
            "test_info": [{"realtime": 3, "count": 1}],
        },
        {
            "id": 2,
            "task": "REC",
            "video": "w.mp4",
            "activity": "wave",
            "test_info": [{"realtime": t, "count": 2} for t in (4, 8, 12)],
        },
    ]
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(items))
    questions = bench.load([path])
    result = bench.score(questions, {"1/0": "1", "2/0": "3", "2/1": "3", "2/2": "3"})
    assert result["per_task"]["REC"] == {
        "score": 25.0,
        "n": 4,
        "category": "Forward Active Responding",
        "items": 2,
        "item_mean": 50.0,
    }
    assert result["metric"] == 25.0


def test_no_responses_score_zero_and_count_missing(bench, questions):
    result = bench.score(questions, {})
    assert result["metric"] == 0.0 and result["missing"] == 20


def test_overall_averages_the_categories_present(bench, questions):
    # backward only: EPM 50, HLD 100, ASI 100 -> 83.33, the overall too
    backward = [q for q in questions if q.task in ("EPM", "ASI", "HLD")]
    result = bench.score(backward, read_predictions(PREDICTIONS))
    assert result["metric"] == 83.33 and list(result["per_category"]) == ["Backward Tracing"]
    assert result["questions"] == 4 and result["missing"] == 0


# --- malformed files ----------------------------------------------------------------------

_GOOD = {
    "id": 3,
    "task": "ASI",
    "video": "v.mp4",
    "realtime": 5,
    "question": "q",
    "options": ["a", "b"],
    "gt": 0,
}
_PROBED = {"id": 4, "task": "SSR", "video": "v.mp4", "test_info": [{"realtime": 1, "step": "s", "type": 1}]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"items": []}, "not the list of items"),
        ([[1, 2]], "item 0 (id ?) is [1, 2], not an object"),
        ([{k: v for k, v in _GOOD.items() if k != "realtime"}], "item 0 (id 3): field 'realtime' is missing"),
        ([{**_GOOD, "realtime": "soon"}], "field 'realtime' is 'soon', not a time in seconds"),
        ([{**_GOOD, "realtime": -1}], "field 'realtime' is -1, not a time in seconds"),
        ([{**_GOOD, "gt": 2}], "field 'gt' is 2, not the index of one of the 2 options"),
        ([{**_GOOD, "gt": "B"}], "field 'gt' is 'B', not an integer"),
        ([{**_GOOD, "options": "a; b"}], "field 'options' is 'a; b', not a list"),
        ([{**_GOOD, "task": "XYZ"}], "field 'task' is 'XYZ', not one of STU, OJR"),
        ([_GOOD, {**_GOOD, "task": "HLD"}], "item 1: id 3 also appears in"),
        ([{**_PROBED, "test_info": []}], "field 'test_info' is [], not a non-empty list"),
        (
            [{**_PROBED, "test_info": [{"realtime": 1, "step": "s"}]}],
            "item 0 (id 4): field 'test_info[0].type' is missing",
        ),
        (
            [{**_PROBED, "test_info": [{"realtime": 1, "step": "s", "type": 2}]}],
            "'test_info[0].type' is 2, not 0",
        ),
        ([{**_PROBED, "test_info": [{"realtime": 1, "type": 0}]}], "field 'test_info[0].step' is missing"),
        (
            [
                {
                    "id": 5,
                    "task": "REC",
                    "video": "v.mp4",
                    "activity": "jump",
                    "test_info": [{"realtime": 1, "count": "x"}],
                }
            ],
            "field 'test_info[0].count' is 'x', not an integer",
        ),
        (
            [{"id": 6, "task": "CRR", "video": "v.mp4", "test_info": [{"realtime": 1, "type": 0}]}],
            "field 'question' is missing",
        ),
    ],
)
def test_malformed_files_raise_one_line_errors_naming_file_item_and_field(bench, tmp_path, items, message):
    path = tmp_path / "ovo.json"
    path.write_text(json.dumps(items))
    with pytest.raises(AnnotationError) as error:
        bench.load([path])
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


def test_duplicate_ids_across_files_are_refused(bench, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([_GOOD]))
    second.write_text(json.dumps([{**_GOOD, "question": "another"}]))
    with pytest.raises(AnnotationError, match="id 3 also appears in .*a.json"):
        bench.load([first, second])


def test_a_file_that_is_not_json_is_named(bench, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(AnnotationError, match="broken.json is not JSON"):
        bench.load([path])
