"""StreamingBench: the official files load, prompt and score as the official code does.

The fixtures under tests/data/benchmarks/streamingbench/ are hand-written in the official
format (github.com/THUNLP-MT/StreamingBench, src/data/questions_*.json); every expected
figure below is worked out by hand from them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from streamvlm.eval.benchmarks import AnnotationError, get_benchmark
from streamvlm.eval.benchmarks.base import CHOICE, OPEN, YESNO, read_predictions
from streamvlm.eval.benchmarks.streamingbench import StreamingBench, parse_time_stamp

DATA = Path(__file__).parent / "data" / "benchmarks" / "streamingbench"
REAL, OMNI, SQA, PROACTIVE = (
    DATA / f"questions_{name}.json" for name in ("real", "omni", "sqa", "proactive")
)
REAL_STREAM = DATA / "questions_real_stream.json"
ALL_FILES = [REAL, OMNI, SQA, PROACTIVE]

# the official wording (src/benchmark/StreamingBench.py, StreamingBenchSQA.py,
# StreamingBenchProactive.py), typed out here to check the module's templates against
INTRO = "You are an advanced video question-answering AI assistant. "
CHOICE_HEAD = (
    INTRO + "You have been provided with some frames from the video and a multiple-choice question related "
    "to the video. Your task is to carefully analyze the video and provide the best answer to question, "
    "choosing from the four options provided. Respond with only the letter (A, B, C, or D) of the correct "
    "option.\n\n"
)
SQA_HEAD = (
    INTRO + "You have been provided with a video and a multiple-choice question related to the video. Your "
    "task is to carefully analyze the video and the provided context to answer the question, choosing from "
    "the four options provided. Respond with only the letter (A, B, C, or D) of the correct option.\n\n"
)
SQA_QUESTION = "\n\nHere is the question. Answer it and don't confuse it with the previous conversation.\n"
PROACTIVE_HEAD = (
    "You are an advanced image question-answering AI assistant. You have been provided with images and a "
    "question related to the images. Your task is to carefully analyze the images and provide the answer to "
    "the question. You need to carefully confirm whether the images content meet the conditions of the "
    "question, and then output the correct content.\n\n"
)


@pytest.fixture(scope="module")
def bench() -> StreamingBench:
    return get_benchmark("streamingbench")


@pytest.fixture(scope="module")
def questions(bench):
    return {q.id: q for q in bench.load(ALL_FILES)}


# ---- loading ---------------------------------------------------------------------------


def test_time_stamps_in_every_form_the_files_use():
    assert parse_time_stamp("00:03:10", "f") == 190.0
    assert parse_time_stamp("0:01:05", "f") == 65.0  # the H:MM:SS rows of questions_real.json
    assert parse_time_stamp("01:30", "f") == 90.0  # its one MM:SS row
    assert parse_time_stamp(42, "f") == 42.0
    with pytest.raises(AnnotationError, match='f: time stamp .1h20. is not "HH:MM:SS"'):
        parse_time_stamp("1h20", "f")


def test_real_questions_load_with_ids_times_options_and_answers(bench):
    loaded = bench.load([REAL])
    assert [q.id for q in loaded] == [
        "questions_real/0/0",
        "questions_real/0/1",
        "questions_real/1/0",
        "questions_real/2/0",
    ]
    assert [q.ask_time for q in loaded] == [15.0, 65.0, 90.0, 120.0]
    assert [q.answer for q in loaded] == ["B", "A", "D", "C"]
    assert {q.kind for q in loaded} == {CHOICE}
    assert {q.context_start for q in loaded} == {0.0}  # full history; the driver applies --context-seconds
    first, counting, causal, text_rich = loaded
    assert first.video == "videos/sample_1_real.mp4"
    assert first.question == "Which utensil is the cook holding right now?"
    assert first.options == ("A whisk.", "A wooden spoon.", "A ladle.", "A pair of tongs.")
    assert first.task == "Object Recognition"
    assert first.extra["category"] == "Real-Time Visual Understanding"
    assert first.extra["required_ability"] == "working memory"
    assert first.extra["video_categories"] == "cooking"
    assert "required_ability" not in counting.extra  # five official rows lack it
    assert causal.extra["cause"] == "The wind dropped" and "video_categories" not in causal.extra
    assert text_rich.options == ("Closed.", "Sale.", "Fresh bread.", "Exit.")  # "A.Closed." rows


def test_omni_questions_keep_every_option_and_their_category(bench):
    emotion, misleading = bench.load([OMNI])
    assert emotion.extra["category"] == "Omni-Source Understanding"
    assert misleading.extra["category"] == "Contextual Understanding"  # the paper's grouping
    assert misleading.options == ("Red.", "Silver.", "Black.", "White.", "Green.")


def test_sqa_questions_carry_their_video_s_earlier_questions_with_ground_truth(bench):
    first, second, third, other_video = bench.load([SQA])
    assert [q.id for q in (first, second, third, other_video)] == [
        "questions_sqa/0/0/0",
        "questions_sqa/0/1/0",
        "questions_sqa/0/2/0",
        "questions_sqa/1/0/0",
    ]
    assert second.options == ("2.", "6.", "7.", "4.")  # unlettered options stay whole
    assert first.extra["previous"] == [] and other_video.extra["previous"] == []
    assert third.extra["previous"] == [
        {
            "time_stamp": "00:00:10",
            "question": "Who is holding the ball now?",
            "options": ["A. The goalkeeper.", "B. The referee.", "C. The striker.", "D. The coach."],
            "answer": "A",
        },
        {
            "time_stamp": "00:00:50",
            "question": "How many passes has the person from the last question made now?",
            "options": ["A. 2.", "B. 6.", "C. 7.", "D. 4."],
            "answer": "C",
        },
    ]


def test_a_proactive_item_becomes_probes_each_second_and_answers_on_time(bench):
    loaded = [q for q in bench.load([PROACTIVE]) if q.extra["item"] == "questions_proactive/0/0"]
    # time_stamp 20 s, ground truth 24 s: probes from 21 s to 24 + 4 = 28 s; answers where a
    # first "yes" is within 2 s of 24 s
    probes = [q for q in loaded if q.kind == YESNO]
    answers = [q for q in loaded if q.kind == OPEN]
    assert [q.ask_time for q in probes] == [21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0]
    assert [q.answer for q in probes] == ["No", "Yes", "Yes", "Yes", "Yes", "Yes", "No", "No"]
    assert [q.id for q in answers] == [f"questions_proactive/0/0/answer@{t}" for t in range(22, 27)]
    assert {q.answer for q in answers} == {"3"}
    assert {q.context_start for q in loaded} == {20.0}  # the official clips start at time_stamp
    assert probes[0].id == "questions_proactive/0/0/probe@21"


def test_stream_files_load_without_context(bench):
    first, second = bench.load([REAL_STREAM])
    assert (first.id, second.id) == ("questions_real_stream/0/0", "questions_real_stream/0/1")
    assert (first.ask_time, second.ask_time) == (6.0, 157.0)
    assert first.extra["audio_path"] == "./audio/real/sample_1_00_00_06.wav"
    assert "previous" not in first.extra


def test_video_paths_resolve_under_the_data_directory(bench, tmp_path):
    question = bench.load([REAL])[0]
    assert bench.video_path(tmp_path, question) == tmp_path / "videos" / "sample_1_real.mp4"
    # a path made absolute by the official preprocess.sh on another machine
    moved = replace(question, video="/elsewhere/src/data/videos/sample_1_real.mp4")
    assert bench.video_path(tmp_path, moved) == tmp_path / "videos" / "sample_1_real.mp4"


def test_default_annotations_are_the_four_official_files(bench):
    assert bench.default_annotations(DATA) == ALL_FILES


# ---- prompts ---------------------------------------------------------------------------


def test_choice_prompt_is_worded_as_the_official_code(bench, questions):
    assert bench.prompt(questions["questions_real/0/0"]) == (
        CHOICE_HEAD + "Question: Which utensil is the cook holding right now?\n\nOptions:\n"
        "A. A whisk.\nB. A wooden spoon.\nC. A ladle.\nD. A pair of tongs.\n\nThe best option is:"
    )


def test_choice_prompt_shows_options_as_written_and_four_at_most(bench, questions):
    assert "Options:\nA.Closed.\nB.Sale.\nC.Fresh bread.\nD.Exit.\n\n" in bench.prompt(
        questions["questions_real/2/0"]
    )
    five = bench.prompt(questions["questions_omni/1/0"])
    assert five.endswith("Options:\nA. Red.\nB. Silver.\nC. Black.\nD. White.\n\nThe best option is:")


def test_sqa_prompts_carry_the_context_as_the_official_code_builds_it(bench, questions):
    assert bench.prompt(questions["questions_sqa/0/0/0"]) == (
        SQA_HEAD + SQA_QUESTION + "Question: Who is holding the ball now?\n\nOptions:\nA. The goalkeeper.\n"
        "B. The referee.\nC. The striker.\nD. The coach.\n\nThe best option is:"
    )
    context = (
        "Here are the contextual information related to the video. Please answer the questions based on the "
        "contextual information: At timestamp 00:00:10, the following question and answer occurred: Question: "
        "Who is holding the ball now?; Options: A. The goalkeeper., B. The referee., C. The striker., D. The "
        "coach.; Answer: A; At timestamp 00:00:50, the following question and answer occurred: Question: How "
        "many passes has the person from the last question made now?; Options: A. 2., B. 6., C. 7., D. 4.; "
        "Answer: C; "
    )
    assert bench.prompt(questions["questions_sqa/0/2/0"]) == (
        SQA_HEAD + context + SQA_QUESTION + "Question: Where does that person stand now?\n\nOptions:\n"
        "A. At the corner flag.\nB. On the goal line.\nC. In the centre circle.\nD. On the bench.\n\n"
        "The best option is:"
    )
    assert "Options:\nA. 2.\nB. 6.\nC. 7.\nD. 4.\n" in bench.prompt(questions["questions_sqa/0/1/0"])


def test_proactive_prompts_poll_then_ask(bench, questions):
    question = 'When the umpire calls deuce, output "Break point".'
    assert bench.prompt(questions["questions_proactive/1/0/probe@61"]) == (
        PROACTIVE_HEAD + f'Question: {question} Is it the right time to output "Break point"? You can only '
        "answer yes or no.\n\nThe answer is:\n"
    )
    assert bench.prompt(questions["questions_proactive/1/0/answer@61"]) == (
        PROACTIVE_HEAD + f"Question: {question}\n\nThe answer is:\n"
    )


# ---- scoring ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "right"),
    [
        ("B", True),
        ("B. A wooden spoon.", True),
        ("Based on the frames, A.", True),  # count.py compares the first character only
        ("b", False),  # ... as is: case counts
        (" B", False),  # ... and a leading space is that character
        ("The answer is B.", False),
        ("", False),
    ],
)
def test_choice_responses_are_read_by_their_first_character(bench, questions, response, right):
    result = bench.score([questions["questions_real/0/0"]], {"questions_real/0/0": response})
    assert result["metric"] == (100.0 if right else 0.0)
    assert result["missing"] == 0


def test_fixture_predictions_score_as_worked_out_by_hand(bench, questions):
    result = bench.score(list(questions.values()), read_predictions(DATA / "predictions.jsonl"))
    # real: 0/0 "B" right, 0/1 " A" wrong, 1/0 "D. Because..." right, 2/0 "The answer is C." wrong -> 2/4
    # omni: 0/0 "a" (answer A) wrong, 1/0 missing -> 0/2
    # sqa: "A" right, "C." right, "" wrong, "D" right -> 3/4
    # proactive items: 0/0 first yes at 23 s (truth 24) on time, answer contains "3": right;
    #   1/0 "My eyes ..." at 61 s holds "yes" (truth 62) on time, answer "break point" lacks "Break point";
    #   2/0 first yes at 102 s, 3 s before the truth 105 s: late; 2/1 the probe at 182 s is missing
    #   -> on time 2/4, right 1/4
    # overall (2 + 0 + 3 + 1) / (4 + 2 + 4 + 4) = 6/14 = 42.857 -> 42.86; missing: omni 1/0, proactive 2/1
    assert result["metric"] == 42.86
    assert result["questions"] == 14
    assert result["missing"] == 2
    assert result["per_task"] == {
        "Object Recognition": {"score": 100.0, "n": 1},
        "Counting": {"score": 0.0, "n": 1},
        "Causal Reasoning": {"score": 100.0, "n": 1},
        "Text-Rich Understanding": {"score": 0.0, "n": 1},
        "Emotion Recognition": {"score": 0.0, "n": 1},
        "Misleading Context Understanding": {"score": 0.0, "n": 1},
        "Sequential Question Answering": {"score": 75.0, "n": 4},
        "Proactive Output": {"score": 25.0, "n": 4},
    }
    # contextual: MCU 0/1 + SQA 3/4 + PO 1/4 = 4/9 = 44.44
    assert result["per_category"] == {
        "Real-Time Visual Understanding": {"score": 50.0, "n": 4},
        "Omni-Source Understanding": {"score": 0.0, "n": 1},
        "Contextual Understanding": {"score": 44.44, "n": 9},
    }
    assert result["proactive"] == {"items": 4, "time_accuracy": 50.0, "answer_accuracy": 25.0}
    assert result["metric_name"] == bench.metric_name


def test_constant_baseline_scores_as_worked_out_by_hand(bench, questions):
    responses = {q.id: bench.baseline_response(q) for q in questions.values()}
    assert {responses[q.id] for q in questions.values() if q.kind == CHOICE} == {"A"}
    assert {responses[q.id] for q in questions.values() if q.kind == YESNO} == {"No"}
    result = bench.score(list(questions.values()), responses)
    # answers: real B A D C (1 is A), omni A B (1), sqa A C B D (1); proactive never hears "yes" (0)
    # overall 3/14 = 21.43; real-time 1/4 = 25; omni-source 1/1; contextual (MCU 0 + SQA 1 + PO 0)/9 = 11.11
    assert result["metric"] == 21.43
    assert result["missing"] == 0
    assert result["per_category"] == {
        "Real-Time Visual Understanding": {"score": 25.0, "n": 4},
        "Omni-Source Understanding": {"score": 100.0, "n": 1},
        "Contextual Understanding": {"score": 11.11, "n": 9},
    }
    assert result["proactive"] == {"items": 4, "time_accuracy": 0.0, "answer_accuracy": 0.0}


def test_no_responses_score_zero_with_every_question_missing(bench, questions):
    result = bench.score(list(questions.values()), {})
    assert (result["metric"], result["questions"], result["missing"]) == (0.0, 14, 14)


# ---- malformed files -------------------------------------------------------------------


def _real_with(tmp_path: Path, **changes) -> Path:
    data = json.loads(REAL.read_text())
    data[0]["questions"][0].update(changes)
    path = tmp_path / "questions_real.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_stamp": "1h20"}, r"question questions_real/0/0: time stamp '1h20' is not \"HH:MM:SS\""),
        ({"time_stamp": None}, r"question questions_real/0/0: time stamp None"),
        ({"answer": "E"}, r"question questions_real/0/0: \"answer\" 'E' is not the letter of an option"),
        ({"answer": None}, r"question questions_real/0/0 has no \"answer\" text"),
        (
            {"options": ["A. x", "B. y", "C. z"]},
            r"questions_real/0/0: \"options\" must list at least 4 texts",
        ),
        ({"question": ""}, r"question questions_real/0/0 has no \"question\" text"),
        ({"task_type": 3}, r"question questions_real/0/0 has no \"task_type\" text"),
    ],
)
def test_malformed_questions_name_the_file_the_item_and_the_field(bench, tmp_path, changes, message):
    path = _real_with(tmp_path, **changes)
    with pytest.raises(AnnotationError, match=message) as error:
        bench.load([path])
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_malformed_files_and_segments_are_refused(bench, tmp_path):
    not_json = tmp_path / "questions_real.json"
    not_json.write_text("{")
    with pytest.raises(AnnotationError, match="is not JSON"):
        bench.load([not_json])
    not_list = tmp_path / "object.json"
    not_list.write_text('{"questions": []}')
    with pytest.raises(AnnotationError, match="object.json: not a list of video segments"):
        bench.load([not_list])
    no_video = tmp_path / "no_video.json"
    no_video.write_text(json.dumps([{"questions": []}]))
    with pytest.raises(AnnotationError, match='segment no_video/0 has no "video_path"'):
        bench.load([no_video])
    with pytest.raises(AnnotationError, match="question id questions_real/0/0 appears twice"):
        bench.load([REAL, REAL])


def test_a_proactive_truth_before_its_start_is_refused(bench, tmp_path):
    data = json.loads(PROACTIVE.read_text())
    data[0]["questions"][0]["ground_truth_time_stamp"] = "00:00:10"
    path = tmp_path / "questions_proactive.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        AnnotationError, match="question questions_proactive/0/0: ground_truth_time_stamp is before"
    ):
        bench.load([path])
