"""The causal driver of public benchmarks (streamvlm/eval/benchmarks/driver.py): one
session per video, questions in time order, no frame later than a question's time in its
context, resumable predictions; on a real decoded video with the offline tiny Qwen2.5-VL."""

from __future__ import annotations

import json

import pytest

from streamvlm.eval.benchmarks.base import CHOICE, Benchmark, BenchQuestion, read_predictions
from streamvlm.eval.benchmarks.driver import DriverOptions, plan_sessions, run_benchmark


class FixtureBench(Benchmark):
    """A benchmark whose questions the test writes: multiple choice, scored by letter."""

    name = "fixture"

    def __init__(self, questions=()):
        self.questions = list(questions)

    def load(self, annotations):
        return self.questions

    def prompt(self, q):
        return q.question + "\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(q.options))

    def score(self, questions, responses):
        right = sum(responses.get(q.id, "").strip().startswith(q.answer) for q in questions)
        return {"metric": 100.0 * right / len(questions)}


def q(qid, t, video="clip.mp4", **kw):
    return BenchQuestion(
        id=qid,
        video=video,
        ask_time=t,
        question=f"what is at {t}?",
        options=("x", "y"),
        answer="A",
        kind=CHOICE,
        **kw,
    )


def test_plan_sessions_one_per_video_in_time_order_offline_last():
    plans = plan_sessions([q("c", 9.0), q("o", None), q("a", 1.0), q("b", 5.0, video="other.mp4")])
    assert [(p.video, p.start, [x.id for x in p.questions]) for p in plans] == [
        ("clip.mp4", 0.0, ["a", "c", "o"]),
        ("other.mp4", 0.0, ["b"]),
    ]


def test_plan_sessions_context_window_starts_each_question_late():
    plans = plan_sessions([q("a", 100.0), q("b", 30.0), q("c", 20.0), q("o", None)], context_seconds=60)
    # b and c start at 0 like the offline question: one session; a starts at 40
    assert [(p.start, [x.id for x in p.questions]) for p in plans] == [(0.0, ["c", "b", "o"]), (40.0, ["a"])]


def test_plan_sessions_questions_sharing_a_context_start_share_a_session():
    # e.g. the probes of one StreamingBench proactive item, polled from its time stamp on
    plans = plan_sessions([q("p2", 22.0, context_start=20.0), q("p1", 21.0, context_start=20.0), q("x", 5.0)])
    assert [(p.start, [x.id for x in p.questions]) for p in plans] == [(0.0, ["x"]), (20.0, ["p1", "p2"])]


def test_driver_options_refuse_bad_values():
    from streamvlm.errors import ConfigError

    for bad in ({"fps": 0}, {"context_seconds": -1}, {"limit": 0}):
        with pytest.raises(ConfigError):
            DriverOptions(**bad)


@pytest.fixture(scope="module")
def engine():
    from streamvlm import StreamVLM

    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


@pytest.fixture
def video_dir(make_video):
    path = make_video("clip.mp4", num_frames=48, fps=8.0)  # 6 s: frames at 0, 0.125, ...
    return path.parent


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_frame_after_the_ask_time_reaches_an_answer(engine, video_dir, tmp_path):
    questions = [q("late", 4.7), q("early", 1.2), q("exact", 2.0), q("end", None), q("after", 99.0)]
    out = tmp_path / "preds.jsonl"
    options = DriverOptions(fps=2.0, max_new_tokens=2)
    summary = run_benchmark(FixtureBench(), questions, video_dir, engine, out, options)
    assert (summary.answered, summary.sessions) == (5, 1)
    by_id = {p["id"]: p for p in _lines(out)}
    # frames are sampled every 0.5 s: the latest frame a question sees is the last one at or before it
    assert {k: by_id[k]["latest_frame_t"] for k in by_id} == pytest.approx(
        {"early": 1.0, "exact": 2.0, "late": 4.5, "end": 5.5, "after": 5.5}
    )
    for p in by_id.values():
        limit = p["ask_time"] if p["ask_time"] is not None else 6.0
        assert p["blocks"], p  # every answer attended to something it saw
        assert max(t_end for _, t_end in p["blocks"]) <= limit + 1e-6
        assert p["prompt"].startswith("what is at") and p["ttft_s"] > 0
    # answers were written in ask order; the offline one (and the one past the end) after the stream
    assert [p["id"] for p in _lines(out)] == ["early", "exact", "late", "after", "end"]


def test_context_window_starts_each_question_late(engine, video_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    run_benchmark(
        FixtureBench(),
        [q("a", 5.0), q("b", 2.5)],
        video_dir,
        engine,
        out,
        DriverOptions(fps=2.0, max_new_tokens=2, context_seconds=2.0),
    )
    for p in _lines(out):
        assert min(t0 for t0, _ in p["blocks"]) >= p["ask_time"] - 2.0 - 1e-6
        assert max(t1 for _, t1 in p["blocks"]) <= p["ask_time"] + 1e-6


def test_a_run_resumes_where_it_stopped(engine, video_dir, tmp_path):
    questions = [q("a", 1.0), q("b", 3.0), q("c", 5.0)]
    out = tmp_path / "preds.jsonl"
    options = DriverOptions(fps=2.0, max_new_tokens=2)
    first = run_benchmark(
        FixtureBench(), questions, video_dir, engine, out, DriverOptions(fps=2.0, max_new_tokens=2, limit=2)
    )
    assert (first.answered, first.already) == (2, 0)
    second = run_benchmark(FixtureBench(), questions, video_dir, engine, out, options)
    assert (second.answered, second.already) == (1, 2)
    assert sorted(read_predictions(out)) == ["a", "b", "c"]
