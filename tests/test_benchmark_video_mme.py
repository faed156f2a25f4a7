"""Video-MME adapter: both official layouts (videos with nested questions, flat rows), the
prompt without subtitles, the official answer extraction and the accuracy breakdowns, on
hand-written files (tests/data/benchmarks/video_mme/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvlm.eval.benchmarks import AnnotationError, get_benchmark
from streamvlm.eval.benchmarks.base import CHOICE, read_predictions
from streamvlm.eval.benchmarks.video_mme import VideoMME, extract_choice

DATA = Path(__file__).parent / "data" / "benchmarks" / "video_mme"
NESTED = DATA / "output_test_template.json"
ROWS = DATA / "videomme_rows.json"


@pytest.fixture(scope="module")
def vmme() -> VideoMME:
    return get_benchmark("video-mme")


@pytest.fixture(scope="module")
def questions(vmme):
    return vmme.load([NESTED, ROWS])


def by_id(questions):
    return {q.id: q for q in questions}


def test_loader_reads_both_layouts_in_file_order(questions):
    assert [q.id for q in questions] == [
        "001-1",
        "001-2",
        "001-3",
        "002-1",
        "002-2",
        "003-1",
        "003-2",
        "003-3",
    ]
    assert all(q.ask_time is None and q.kind == CHOICE for q in questions)
    assert [q.answer for q in questions] == list("CADBABCA")
    q = by_id(questions)
    assert q["001-1"].task == "Counting Problem"
    assert q["001-1"].question == "How many planets are drawn on the blackboard at the start of the video?"
    assert dict(q["002-2"].extra) == {
        "video_id": "002",
        "duration": "long",
        "domain": "Sports Competition",
        "sub_category": "Basketball",
    }
    assert q["003-2"].extra["duration"] == "medium" and q["003-2"].extra["sub_category"] == "Food"


def test_the_official_templates_trailing_commas_are_read():
    # output_test_template.json, as BradyFU/Video-MME ships it, has a "," after each "response"
    with pytest.raises(json.JSONDecodeError):
        json.loads(NESTED.read_text())


def test_options_lose_their_letters(questions):
    q = by_id(questions)
    assert q["001-1"].options == ("Two.", "Five.", "Three.", "Eight.")
    # an option published without its "D. " keeps its text
    assert q["001-3"].options[3] == "She points a laser at the ceiling."


def test_video_files_are_named_by_youtube_id(vmme, questions, tmp_path):
    q = by_id(questions)
    assert q["003-1"].video == "data/Qq9_food01.mp4"  # videoID (HF rows)
    assert q["002-1"].video == "data/xYz-12_ab.mp4"  # from the url's v=
    assert q["001-1"].video == "data/001.mp4"  # neither: video_id
    assert vmme.video_path(tmp_path, q["003-1"]) == tmp_path / "data" / "Qq9_food01.mp4"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Qq9_food01.mkv").write_bytes(b"")
    assert vmme.video_path(tmp_path, q["003-1"]) == tmp_path / "data" / "Qq9_food01.mkv"


def test_prompt_is_the_readme_prompt_without_subtitles(vmme, questions):
    assert vmme.prompt(by_id(questions)["001-3"]) == (
        "Select the best answer to the following multiple-choice question based on the video. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "What does the lecturer do right after switching off the lights?\n"
        "A. She opens a window.\nB. She sits down.\nC. She starts a projector.\n"
        "D. She points a laser at the ceiling.\n"
        "The best answer is:"
    )


@pytest.mark.parametrize(
    "response, choice",
    [
        ("C. Three.", "C"),
        ("The answer is D", "D"),
        ("The best answer is: (B)", "B"),
        ("Answer: C", "C"),  # "Answer:" is deleted, else its A would be read
        ("Option: B", "B"),
        # the official list joins "Best answer:" and "Best option:" (a missing comma), so
        # neither is deleted and the B of "Best" is read
        ("Best answer: A", "B"),
        ("The best option is C", "C"),  # joined too, but it has no A-D capital
        ("Based on the video, A", "B"),  # the first capital A-D anywhere
        ("it is a dunk", ""),
        ("d", ""),  # capitals only
        ("", ""),
    ],
)
def test_extract_choice_follows_the_official_script(response, choice):
    assert extract_choice(response) == choice


def test_score_on_the_fixture_predictions(vmme, questions):
    # 001-1 "C. Three."             -> C = C right      (short,  Knowledge, Astronomy,  Counting)
    # 001-2 "Best answer: A"        -> B != A wrong     (short,  Knowledge, Astronomy,  OCR)
    # 001-3 "The answer is D"       -> D = D right      (short,  Knowledge, Astronomy,  Temporal Reasoning)
    # 002-1 "it is a dunk"          -> no letter: not counted, unparsed = 1
    # 002-2 "Answer: C"             -> C != A wrong     (long,   Sports, Basketball,     Synopsis)
    # 003-1 "B"                     -> B = B right      (medium, Life Record, Food,      Object Recognition)
    # 003-2 no response             -> wrong, missing = 1 (medium, Attribute Perception)
    # 003-3 "Based on the video, A" -> B != A wrong     (medium, Spatial Reasoning)
    # counted 7, right 3: 3/7 = 42.857 -> 42.9; unparsed as wrong (lmms-eval): 3/8 = 37.5
    # short 2/3 = 66.7, medium 1/3 = 33.3, long 0/1 = 0.0
    result = vmme.score(questions, read_predictions(DATA / "predictions.jsonl"))
    assert result["metric"] == 42.9
    assert result["metric_name"] == "accuracy"
    assert (result["questions"], result["answered"], result["missing"], result["unparsed"]) == (8, 7, 1, 1)
    assert result["metric_unparsed_as_wrong"] == 37.5
    assert result["per_duration"] == {
        "short": {"score": 66.7, "n": 3},
        "medium": {"score": 33.3, "n": 3},
        "long": {"score": 0.0, "n": 1},
    }
    assert result["per_domain"] == {
        "Knowledge": {"score": 66.7, "n": 3},
        "Sports Competition": {"score": 0.0, "n": 1},
        "Life Record": {"score": 33.3, "n": 3},
    }
    assert list(result["per_sub_category"]) == ["Astronomy", "Basketball", "Food"]
    # the official task order; Action Recognition's only response had no letter
    assert result["per_task"] == {
        "Attribute Perception": {"score": 0.0, "n": 1},
        "Object Recognition": {"score": 100.0, "n": 1},
        "OCR Problems": {"score": 0.0, "n": 1},
        "Counting Problem": {"score": 100.0, "n": 1},
        "Temporal Reasoning": {"score": 100.0, "n": 1},
        "Spatial Reasoning": {"score": 0.0, "n": 1},
        "Information Synopsis": {"score": 0.0, "n": 1},
    }
    json.dumps(result)


def test_constant_baseline_on_the_fixture(vmme, questions):
    # "A" everywhere; truths C A D | B A | B C A: right on 001-2, 002-2, 003-3 -> 3/8 = 37.5
    # short 1/3 = 33.3, medium 1/3 = 33.3, long 1/2 = 50.0
    result = vmme.score(questions, {q.id: vmme.baseline_response(q) for q in questions})
    assert result["metric"] == 37.5
    assert (result["answered"], result["missing"], result["unparsed"]) == (8, 0, 0)
    assert result["per_duration"] == {
        "short": {"score": 33.3, "n": 3},
        "medium": {"score": 33.3, "n": 3},
        "long": {"score": 50.0, "n": 2},
    }
    assert result["per_task"]["OCR Problems"] == {"score": 100.0, "n": 1}


def test_json_lines_rows(vmme, tmp_path):
    rows = json.loads(ROWS.read_text())
    path = tmp_path / "videomme.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert [q.id for q in vmme.load([path])] == ["003-1", "003-2", "003-3"]


def test_parquet_rows(vmme, tmp_path):
    path = tmp_path / "test-00000-of-00001.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(AnnotationError, match="reading Parquet needs pyarrow"):
            vmme.load([path])
        return
    pq.write_table(pa.Table.from_pylist(json.loads(ROWS.read_text())), path)
    assert [q.answer for q in vmme.load([path])] == ["B", "C", "A"]


def write(tmp_path: Path, items) -> Path:
    path = tmp_path / "videomme.json"
    path.write_text(items if isinstance(items, str) else json.dumps(items), encoding="utf-8")
    return path


ROW = json.loads(ROWS.read_text())[0]


VIDEO = {"video_id": "009", "duration": "short", "domain": "Knowledge", "sub_category": "Law"}


def without(key):
    return {k: v for k, v in ROW.items() if k != key}


@pytest.mark.parametrize(
    "items, message",
    [
        ("[", "is not JSON"),
        ({"videos": []}, "expected a JSON list"),
        ([ROW, 3], "item 1: not a JSON object"),
        ([without("task_type")], "item 0: no 'task_type' field"),
        (
            [{**ROW, "duration": "very long"}],
            "item 0: duration 'very long' is not one of short, medium, long",
        ),
        ([{**ROW, "answer": "E"}], "item 0: answer 'E' is not the letter of one of its 4 options"),
        ([{**ROW, "options": "A. x"}], "item 0: 'options' must be a list"),
        ([{**ROW, "question": ["x"]}], "item 0: 'question' must be text"),
        ([{"video_id": "9", "questions": {"q": 1}}], "item 0: 'questions' must be a list"),
        (
            [{**VIDEO, "questions": [{"question_id": "9-1"}]}],
            "item 0 question 0: no 'task_type' field",
        ),
        ([ROW, ROW], "question_id '003-1' appears twice"),
    ],
)
def test_malformed_files_name_file_item_and_field(vmme, tmp_path, items, message):
    with pytest.raises(AnnotationError, match=message) as caught:
        vmme.load([write(tmp_path, items)])
    assert "videomme.json" in str(caught.value) and "\n" not in str(caught.value)


def test_default_annotations_prefer_the_json_lines_conversion(vmme, tmp_path):
    (tmp_path / "videomme").mkdir()
    (tmp_path / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    assert vmme.default_annotations(tmp_path) == [tmp_path / "videomme" / "test-00000-of-00001.parquet"]
    (tmp_path / "videomme" / "videomme.jsonl").write_text("")
    assert vmme.default_annotations(tmp_path) == [tmp_path / "videomme" / "videomme.jsonl"]


def test_missing_file_and_data_dir(vmme, tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        vmme.load([tmp_path / "nothing.json"])
    with pytest.raises(AnnotationError, match="test-00000-of-00001.parquet"):
        vmme.default_annotations(tmp_path)


def test_first_template_field_names(vmme):
    # duration_category / video_category / video_subcategory / choices: the template before
    # 2024-06-18
    questions = vmme.load([DATA / "output_template_v1.json"])
    assert [q.id for q in questions] == ["004-1", "004-2"]
    assert dict(questions[0].extra) == {
        "video_id": "004",
        "duration": "long",
        "domain": "Film & Television",
        "sub_category": "Documentary",
    }
    assert questions[0].video == "data/Lm0-doc_04.mp4"
    assert questions[1].options == (
        "A storm is coming.",
        "The engine fails.",
        "It is out of fuel.",
        "A passenger is ill.",
    )
    # baseline "A": 004-1 (B) wrong, 004-2 (A) right -> 1/2 = 50.0
    result = vmme.score(questions, {q.id: "A" for q in questions})
    assert result["metric"] == 50.0 and result["per_domain"] == {"Film & Television": {"score": 50.0, "n": 2}}
