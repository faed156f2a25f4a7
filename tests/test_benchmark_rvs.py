"""RVS-Ego and RVS-Movie: the loader over both published layouts, the prompt, the judge's
reply parsing, and judged scores over a real HTTP judge (tests/_judge_server.py), worked
out by hand; the judge also reaches the project's own ``streamvlm serve``."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from _judge_server import MODEL, JudgeServer  # noqa: E402

from streamvlm.eval.benchmarks import get_benchmark  # noqa: E402
from streamvlm.eval.benchmarks.base import OPEN, AnnotationError, read_predictions  # noqa: E402
from streamvlm.eval.benchmarks.judge import (  # noqa: E402
    Judge,
    JudgeError,
    chat_completions_url,
    correctness_messages,
    parse_verdict,
)
from streamvlm.eval.benchmarks.rvs import CONSTANT_ANSWER, RVSEgo, RVSMovie  # noqa: E402

DATA = Path(__file__).parent / "data" / "benchmarks" / "rvs"
EGO = DATA / "test_qa_ego4d.json"
MOVIE = DATA / "movienet_oe.json"


@pytest.fixture(scope="module")
def judge_server():
    server = JudgeServer(api_key="judge-key")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_judge_server(judge_server):
    """Every test starts with a judge that answers at once and has seen no request."""
    judge_server.fail_next = 0
    judge_server.bodies.clear()


@pytest.fixture
def judge(judge_server):
    return Judge(judge_server.url, MODEL, api_key="judge-key", backoff_s=0.0)


# -- loading ---------------------------------------------------------------------------------


def test_the_registry_names_both_subsets():
    assert isinstance(get_benchmark("rvs-ego"), RVSEgo)
    assert isinstance(get_benchmark("rvs-movie"), RVSMovie)
    assert RVSEgo().judge is None


def test_the_vstream_qa_layout_loads_every_question_at_the_end_of_its_window():
    questions = RVSEgo().load([EGO])
    # the repeated official id 104 becomes 104_1, as Flash-VStream's scorer keys repeats
    assert [q.id for q in questions] == ["101", "102", "103", "104", "105", "104_1"]
    assert [q.video for q in questions] == ["videos/000007.mp4"] * 3 + ["videos/000012.mp4"] * 3
    # numbers, numeric strings and clock strings: ask_time is end_time in seconds
    assert [q.ask_time for q in questions] == [42.0, 61.5, 80.0, 8.0, 25.0, 40.0]
    assert [q.extra["start_time"] for q in questions] == [30.0, 50.5, 65.0, 0.0, 10.0, 26.0]
    assert [q.task for q in questions] == ["object", "location", "object", "action", "attribute", "action"]
    assert {q.kind for q in questions} == {OPEN} and all(q.options == () for q in questions)
    assert questions[0].question == "What did I put on the counter?"
    assert questions[1].answer == "in the top drawer"
    assert questions[0].context_start == 0.0  # the whole history: a streaming question
    # extra keys the file carries are kept
    assert questions[2].extra["duration"] == 15 and questions[4].extra["note"] == "an extra key"
    assert questions[0].extra["video_id"] == "000007"


def test_the_rekv_layout_loads_each_videos_conversations():
    questions = RVSMovie().load([MOVIE])
    assert [q.id for q in questions] == ["tt0000001_clip3_0", "tt0000001_clip3_1", "tt0000002_clip1_0"]
    assert questions[0].video == "data/rvs/movie/videos/tt0000001_clip3.mp4"
    assert [q.ask_time for q in questions] == [20.0, 55.0, 30.25]
    assert [q.answer for q in questions] == ["the detective", "an envelope", "the airport"]
    assert [q.task for q in questions] == ["", "", ""]  # no answer_type in this layout
    assert questions[1].extra["duration"] == 300 and questions[1].extra["video_id"] == "tt0000001_clip3"


def test_a_rekv_video_path_is_found_under_the_data_directorys_videos(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "tt0000001_clip3.mp4").write_bytes(b"")
    bench = RVSMovie()
    first, _, third = bench.load([MOVIE])
    assert bench.video_path(tmp_path, first) == tmp_path / "videos" / "tt0000001_clip3.mp4"
    # absent everywhere: the path as the annotations name it (the driver reports it missing)
    assert bench.video_path(tmp_path, third) == tmp_path / "data/rvs/movie/videos/tt0000002_clip1.mp4"


def test_the_default_annotations_are_the_first_published_file_present(tmp_path):
    (tmp_path / "ego4d_oe.json").write_text("[]")
    (tmp_path / "test_qa_ego4d.json").write_text("[]")
    assert RVSEgo().default_annotations(tmp_path) == [tmp_path / "test_qa_ego4d.json"]
    with pytest.raises(AnnotationError, match="movienet"):
        RVSMovie().default_annotations(tmp_path)


BAD_ITEMS = [
    ({"video_id": "v", "question": "q", "answer": "a", "start_time": 0, "end_time": 1}, "item 0: no 'id'"),
    ({"id": 1, "question": "q", "answer": "a", "start_time": 0, "end_time": 1}, "item 0: 'video_id'"),
    ({"id": 1, "video_id": "v", "answer": "a", "start_time": 0, "end_time": 1}, "item 0: 'question'"),
    ({"id": 1, "video_id": "v", "question": "q", "start_time": 0, "end_time": 1}, "item 0: no 'answer'"),
    (
        {"id": 1, "video_id": "v", "question": "q", "answer": "a", "start_time": 0},
        "item 0: 'end_time' is None",
    ),
    (
        {"id": 1, "video_id": "v", "question": "q", "answer": "a", "start_time": 0, "end_time": "soon"},
        "item 0: 'end_time' is 'soon'",
    ),
    (
        {"id": 1, "video_id": "v", "question": "q", "answer": "a", "start_time": 9, "end_time": 3},
        "item 0: end_time 3 is before start_time 9",
    ),
    ({"video_id": "v", "conversations": {"question": "q"}}, "item 0: 'conversations' is dict"),
    (
        {
            "video_id": "v",
            "conversations": [{"question": "q", "answer": "a", "start_time": -1, "end_time": 2}],
        },
        "item 0 (video v), conversation 0: 'start_time' is -1",
    ),
    ("not an object", "item 0 is str"),
]


@pytest.mark.parametrize("item, message", BAD_ITEMS)
def test_a_malformed_item_names_the_file_the_item_and_the_field(tmp_path, item, message):
    path = tmp_path / "test_qa_ego4d.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(AnnotationError) as caught:
        RVSEgo().load([path])
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_file_that_is_not_a_list_of_questions_is_refused(tmp_path):
    path = tmp_path / "test_qa_ego4d.json"
    path.write_text(json.dumps({"questions": []}))
    with pytest.raises(AnnotationError, match="top level is dict, not a list"):
        RVSEgo().load([path])
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="is not JSON"):
        RVSEgo().load([path])


# -- asking ----------------------------------------------------------------------------------


def test_the_prompt_is_flash_vstreams_open_ended_wording():
    question = RVSEgo().load([EGO])[0]
    assert RVSEgo().prompt(question) == (
        "Answer the following open-ended question based on the video. What did I put on the counter?"
    )


def test_the_constant_baseline_is_one_fixed_non_answer():
    bench = RVSMovie()
    assert {bench.baseline_response(q) for q in bench.load([MOVIE])} == {CONSTANT_ANSWER}


# -- the judge's reply, read as the official scripts read it ---------------------------------

VERDICTS = [
    ("{'pred': 'yes', 'score': 5}", "yes", 5),
    ("{'pred': 'yes', 'score': 4.8}", "yes", 4),  # int() truncates, as the official script does
    ("{'pred': 'No', 'score': '3'}", "no", 3),  # case-blind; int('3')
    ("{'pred': 'Yes, mostly', 'score': 4}", "yes", 4),  # "yes" is looked for first
    ("{'pred': 'not sure', 'score': 2}", "no", 2),  # "no" in "not sure": the official rule
    ("{'pred': 'partly', 'score': 2}", "", 2),  # neither: counted, but as neither
    ("{'prev': 'yes', 'score': 5}", "yes", 5),  # ReKV's fallback key
    ('{"pred": "yes", "score": 5}', "yes", 5),  # a JSON object is a Python dict literal too
    ("  {'pred': 'no', 'score': 0}\n", "no", 0),
]


@pytest.mark.parametrize("reply, pred, score", VERDICTS)
def test_a_judge_reply_is_parsed_as_the_official_script_parses_it(reply, pred, score):
    verdict = parse_verdict(reply)
    assert verdict.ok and (verdict.pred, verdict.score) == (pred, score)
    assert verdict.correct == (pred == "yes")


@pytest.mark.parametrize(
    "reply",
    [
        "yes",
        "The prediction is correct.",
        "```python\n{'pred': 'yes', 'score': 5}\n```",  # literal_eval refuses a fenced reply
        "{'pred': 'yes'}",
        "{'score': 5}",
        "{'pred': True, 'score': 5}",
        "{'pred': 'yes', 'score': 'high'}",
        "['yes', 5]",
        "",
    ],
)
def test_a_reply_outside_the_judge_format_is_a_failure(reply):
    verdict = parse_verdict(reply)
    assert not verdict.ok and not verdict.correct and verdict.reply == reply


def test_the_endpoint_is_found_from_a_base_a_v1_or_a_full_address():
    full = "http://h:8000/v1/chat/completions"
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", full):
        assert chat_completions_url(url) == full


def test_the_judge_sends_the_official_prompt(judge_server, judge):
    verdict = judge.judge("What did I cut?", "cardboard", "Cardboard, with scissors.")
    assert verdict.correct and verdict.score == 5
    [body] = judge_server.bodies
    assert body["model"] == MODEL and body["temperature"] == 0.002 and "max_tokens" not in body
    assert body["messages"] == correctness_messages(
        "What did I cut?", "cardboard", "Cardboard, with scissors."
    )
    system, user = (m["content"] for m in body["messages"])
    assert system.startswith("You are an intelligent chatbot designed for evaluating the correctness")
    assert "Correct Answer: cardboard\nPredicted Answer: Cardboard, with scissors.\n\n" in user
    assert user.endswith("For example, your response should look like this: {'pred': 'yes', 'score': 4.8}.")


# -- scores over the fixtures ------------------------------------------------------------------


def test_rvs_ego_is_scored_by_the_judge(judge_server, judge):
    bench = RVSEgo(judge=judge)
    questions = bench.load([EGO])
    result = bench.score(questions, read_predictions(DATA / "predictions_ego.jsonl"))
    # judge replies (tests/_judge_server.py rules):
    #   101 holds "a red kettle"      -> yes, 5
    #   102 "[close]"                 -> yes, 4.8 -> int 4
    #   103 "Paper."                  -> no, 0
    #   104 "[garble]"                -> not the judge format, 3 attempts -> judge failure, left out
    #   105 no prediction             -> missing: no, 0 (not sent)
    #   104_1 "[neither]"             -> 'unsure', 1: counted, neither yes nor no
    # judged = 5 (all but 104); yes = 2 (101, 102); no = 2 (103, 105)
    # accuracy = 2 / 5 = 40 %; mean score = (5 + 4 + 0 + 0 + 1) / 5 = 2.0
    assert result["metric"] == result["accuracy"] == 40.0
    assert result["mean_score"] == 2.0
    assert (result["questions"], result["missing"], result["judged"]) == (6, 1, 5)
    assert (result["judge_failures"], result["judge_failed_ids"]) == (1, ["104"])
    assert (result["yes"], result["no"]) == (2, 2)
    assert result["score_distribution"] == {"yes": {"4": 1, "5": 1}, "no": {"0": 2}}
    # per answer_type: object 101 yes 5 + 103 no 0 -> 50 %, 2.5; location 102 yes 4 -> 100 %, 4;
    # action: 104 failed, 104_1 neither 1 -> 0 %, 1 (n 1); attribute: 105 missing -> 0 %, 0
    assert result["per_task"] == {
        "object": {"score": 50.0, "mean_score": 2.5, "n": 2},
        "location": {"score": 100.0, "mean_score": 4.0, "n": 1},
        "action": {"score": 0.0, "mean_score": 1.0, "n": 1},
        "attribute": {"score": 0.0, "mean_score": 0.0, "n": 1},
    }
    assert result["judge"] == {
        "model": MODEL,
        "url": judge_server.url,
        "prompt": "video-chatgpt-correctness",
        "prompt_version": "flash-vstream-2024",
        "temperature": 0.002,
    }
    # 5 answered: 4 judged once, the garbled one asked 3 times (attempts); 105 never sent
    assert len(judge_server.bodies) == 4 + 3
    json.dumps(result)  # the CLI prints it as JSON


def test_rvs_movie_is_scored_by_the_judge(judge):
    bench = RVSMovie(judge=judge)
    result = bench.score(bench.load([MOVIE]), read_predictions(DATA / "predictions_movie.jsonl"))
    # clip3_0 holds "the detective" (case-blind) -> yes 5; clip3_1 "A letter." -> no 0;
    # clip1_0 holds "the airport" -> yes 5.  accuracy = 2/3 = 66.6667 %, score = 10/3
    assert result["metric"] == 66.6667 and result["mean_score"] == 3.333333
    assert (result["questions"], result["missing"], result["judged"]) == (3, 0, 3)
    assert result["judge_failures"] == 0
    assert result["per_task"] == {}  # the ReKV layout has no answer_type


def test_the_constant_baseline_is_judged_like_any_prediction(judge_server, judge):
    bench = RVSEgo(judge=judge)
    questions = bench.load([EGO])
    result = bench.score(questions, {q.id: bench.baseline_response(q) for q in questions})
    # "I don't know." holds no answer: every question no, 0 -> 0 %, mean 0, all 6 judged
    assert (result["metric"], result["mean_score"], result["judged"], result["no"]) == (0.0, 0.0, 6, 6)
    assert result["missing"] == 0 and len(judge_server.bodies) == 6


def test_scoring_without_a_judge_says_how_to_name_one():
    bench = RVSEgo()
    with pytest.raises(AnnotationError) as caught:
        bench.score(bench.load([EGO]), {})
    assert str(caught.value) == "open-ended RVS needs a judge: pass --judge-url URL --judge-model NAME"


def test_no_responses_at_all_are_all_wrong_without_asking(judge_server, judge):
    bench = RVSMovie(judge=judge)
    result = bench.score(bench.load([MOVIE]), {})
    assert (result["metric"], result["missing"], result["judged"]) == (0.0, 3, 3)
    assert judge_server.bodies == []


# -- the endpoint's failures -----------------------------------------------------------------


def test_an_overloaded_judge_is_asked_again(judge_server, judge):
    judge_server.fail_next = 2
    assert judge.judge("q", "blue", "blue").correct
    assert len(judge_server.bodies) == 3


def test_a_judge_that_keeps_failing_is_a_one_line_error_naming_it(judge_server, judge):
    judge_server.fail_next = 3
    with pytest.raises(JudgeError) as caught:
        judge.judge("q", "blue", "blue")
    assert str(caught.value) == (
        f"judge endpoint {judge_server.url}/chat/completions failed 3 times (HTTP 503); check --judge-url "
        "and that the server is up"
    )


def test_judging_many_keeps_their_order_and_stops_at_an_unusable_endpoint(judge_server, judge):
    items = [("q", "blue", "blue"), ("q", "red", "green"), ("q", "one", "[close]"), ("q", "x", "[neither]")]
    verdicts = judge.judge_all(items)  # 8 workers by default: four requests in flight
    assert [(v.pred, v.score) for v in verdicts] == [("yes", 5), ("no", 0), ("yes", 4), ("", 1)]
    judge_server.fail_next = 1000
    with pytest.raises(JudgeError, match="failed 3 times"):
        judge.judge_all(items * 4)


def test_a_wrong_api_key_is_refused_at_once(judge_server):
    judge = Judge(judge_server.url, MODEL, api_key="wrong", backoff_s=0.0)
    with pytest.raises(
        JudgeError, match=r"refused the request \(HTTP 401: .*invalid api key.*judge-api-key-env"
    ):
        judge.judge("q", "blue", "blue")


def test_an_unknown_model_is_refused_naming_the_option(judge_server):
    judge = Judge(judge_server.url, "gpt-9", api_key="judge-key", backoff_s=0.0)
    with pytest.raises(JudgeError, match=r"HTTP 404: .*no model gpt-9.*--judge-model"):
        judge.judge("q", "blue", "blue")


def test_a_closed_port_is_a_one_line_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens
    judge = Judge(f"http://127.0.0.1:{port}", MODEL, attempts=2, backoff_s=0.0, timeout_s=5)
    with pytest.raises(
        JudgeError, match=rf"^judge endpoint http://127.0.0.1:{port}/v1/chat/completions failed 2"
    ):
        judge.judge("q", "a", "a")


# -- the project's own OpenAI-compatible endpoint as the judge ---------------------------------


def test_the_judge_reaches_streamvlm_serve_and_counts_its_free_text_as_failures():
    pytest.importorskip("websockets")
    from _server import ServerThread, auth, jpeg, request
    from websockets.asyncio.client import connect

    from streamvlm import StreamVLM
    from streamvlm.servers import ServerSettings, create_app, pack_frame

    settings = ServerSettings(api_key="serve-key", max_sessions=2, idle_timeout_s=None, max_new_tokens=16)
    engine = StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    server = ServerThread(create_app(engine, settings), settings)
    try:
        status, session = request(
            server.http, "POST", "/v1/sessions", {"memory": {"window": 2}}, token="serve-key"
        )
        assert status == 201

        async def feed():
            async with connect(
                server.ws + session["stream"], additional_headers=auth(session["token"])
            ) as ws:
                for i in range(4):
                    await ws.send(pack_frame(jpeg(i), t=i * 0.5))
                    assert json.loads(await ws.recv())["type"] == "ack"

        asyncio.run(feed())
        # streamvlm serve answers over a session's memory: the session rides in the body
        judge = Judge(
            server.http,
            "tiny-qwen2.5-vl",
            api_key=session["token"],
            attempts=2,
            backoff_s=0.0,
            max_tokens=8,
            extra_body={"streamvlm": {"session": session["id"]}},
        )
        bench = RVSMovie(judge=judge)
        questions = bench.load([MOVIE])[:1]
        result = bench.score(questions, {questions[0].id: "The detective."})
    finally:
        server.stop()
    # the tiny model's 8 tokens are no Python dictionary: a judge failure, not a crash
    assert (result["judge_failures"], result["judge_failed_ids"]) == (1, ["tt0000001_clip3_0"])
    assert (result["judged"], result["metric"], result["missing"]) == (0, 0.0, 0)
    assert result["judge"]["model"] == "tiny-qwen2.5-vl" and result["judge"]["url"] == server.http


def test_the_constant_baseline_scores_without_a_judge():
    # its fixed non-answer is scored no/0, as the judge above scores it; anything else needs a judge
    bench = RVSEgo()
    questions = bench.load([EGO])
    result = bench.score(questions, {q.id: bench.baseline_response(q) for q in questions})
    assert (result["metric"], result["mean_score"], result["judged"], result["judge"]) == (0.0, 0.0, 6, None)
    with pytest.raises(AnnotationError, match="needs a judge"):
        bench.score(questions, {questions[0].id: "a red car"})


def test_eval_score_command_reaches_the_judge(judge_server, tmp_path, monkeypatch):
    from tests._cli import run_cli

    monkeypatch.setenv("JUDGE_KEY", "judge-key")
    argv = [
        "eval",
        "score",
        "rvs-ego",
        "--annotations",
        str(EGO),
        "--predictions",
        str(DATA / "predictions_ego.jsonl"),
    ]
    argv += [
        "--judge-url",
        judge_server.url,
        "--judge-model",
        MODEL,
        "--judge-api-key-env",
        "JUDGE_KEY",
        "--json",
    ]
    proc, imported = run_cli(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert (result["metric"], result["judge"]["model"], result["judge"]["temperature"]) == (
        40.0,
        MODEL,
        0.002,
    )
    assert "torch" not in imported
