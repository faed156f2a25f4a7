"""``streamvlm eval BENCH`` and ``streamvlm eval score`` as a shell runs them: a causal run of
OVO-Bench-format questions over a decoded video with the offline tiny Qwen2.5-VL, its
predictions scored, the constant baseline, and mistakes refused in one line before torch loads."""

from __future__ import annotations

import json
from pathlib import Path

from tests._cli import assert_one_error_line, run_cli

OVO = Path(__file__).parent / "data" / "benchmarks" / "ovo_bench" / "ovo_bench_new.json"

# three OVO-Bench items over one 6-s clip: multiple choice at 2 s and 4 s, a count probed at 1, 3 and 5 s
ITEMS = [
    {
        "id": 0,
        "task": "EPM",
        "video": "clip.mp4",
        "realtime": 2,
        "question": "Where is it?",
        "options": ["left", "right"],
        "gt": 0,
    },
    {
        "id": 1,
        "task": "STU",
        "video": "clip.mp4",
        "realtime": 4.0,
        "question": "What moves?",
        "options": ["a square", "a circle", "nothing"],
        "gt": 1,
    },
    {
        "id": 2,
        "task": "REC",
        "video": "clip.mp4",
        "activity": "blink",
        "test_info": [{"realtime": 1, "count": 0}, {"realtime": 3, "count": 1}, {"realtime": 5, "count": 1}],
    },
]


def test_score_constant_baseline_needs_no_model(tmp_path):
    proc, imported = run_cli(
        ["eval", "score", "ovo-bench", "--annotations", str(OVO), "--baseline", "constant", "--json"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert (result["benchmark"], result["metric"], result["baseline"]) == ("ovo-bench", 38.89, "constant")
    assert "torch" not in imported  # scoring reads JSON and text only


def test_run_then_score_is_causal(tmp_path, make_video):
    data = tmp_path / "data"
    (data / "src_videos").mkdir(parents=True)
    make_video("clip.mp4", num_frames=48, fps=8.0).rename(data / "src_videos" / "clip.mp4")
    annotations = tmp_path / "ovo_bench_new.json"
    annotations.write_text(json.dumps(ITEMS))
    out = tmp_path / "preds.jsonl"
    run = [
        "eval",
        "ovo-bench",
        "--data",
        str(data),
        "--annotations",
        str(annotations),
        "--out",
        str(out),
        "--model",
        "tiny-qwen2.5-vl",
        "--device",
        "cpu",
        "--fps",
        "2",
        "--max-new-tokens",
        "2",
        "--json",
    ]
    proc, _ = run_cli(run, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert (report["answered"], report["sessions"]) == (5, 1)
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["id"] for p in preds] == ["2/0", "0", "2/1", "1", "2/2"]  # in ask order: 1, 2, 3, 4, 5 s
    for p in preds:
        assert p["latest_frame_t"] <= p["ask_time"] and max(t for _, t in p["blocks"]) <= p["ask_time"]
    again, _ = run_cli(run, tmp_path)  # resumes: everything is answered already
    assert json.loads(again.stdout[: again.stdout.rindex("}") + 1])["answered"] == 0
    scored, _ = run_cli(
        [
            "eval",
            "score",
            "ovo-bench",
            "--annotations",
            str(annotations),
            "--predictions",
            str(out),
            "--json",
        ],
        tmp_path,
    )
    result = json.loads(scored.stdout[: scored.stdout.rindex("}") + 1])
    assert result["questions"] == 5 and result["missing"] == 0 and 0 <= result["metric"] <= 100


def test_missing_videos_are_refused_before_the_model_loads(tmp_path):
    annotations = tmp_path / "ovo_bench_new.json"
    annotations.write_text(json.dumps(ITEMS))
    proc, imported = run_cli(
        [
            "eval",
            "ovo-bench",
            "--data",
            str(tmp_path),
            "--annotations",
            str(annotations),
            "--out",
            str(tmp_path / "p.jsonl"),
        ],
        tmp_path,
    )
    assert_one_error_line(proc, "1 of 1 videos are missing under")
    assert "--skip-missing" in proc.stderr and "torch" not in imported


def test_bad_annotation_paths_and_prediction_files_get_one_line(tmp_path):
    proc, _ = run_cli(
        [
            "eval",
            "score",
            "ovo-bench",
            "--annotations",
            str(tmp_path / "nope.json"),
            "--baseline",
            "constant",
        ],
        tmp_path,
    )
    assert_one_error_line(proc, "nope.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    proc, _ = run_cli(
        ["eval", "score", "ovo-bench", "--annotations", str(OVO), "--predictions", str(bad)], tmp_path
    )
    assert_one_error_line(proc, "bad.jsonl:1")
