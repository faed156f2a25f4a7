"""The `streamvlm` command line.

Most tests call ``streamvlm.cli.main([...])`` in this process and read what it printed
(fd-level capture, so FFmpeg's own log lines would show up too); each makes or names the
video and options it uses. One real subprocess per command checks exit codes and the
one-line error as a shell sees them.

Tiny random-weight models on CPU, a few frames per second of stream: the answers are
noise, what is tested is the plumbing (timing of questions, output formats, errors).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamvlm.cli import main
from streamvlm.cli_options import DEFAULT_MODEL
from streamvlm.errors import ConfigError, InvalidQuestionError
from streamvlm.models.catalog import model_card
from streamvlm.runtime.cli import TimedQuestion, ask_from_stdin, parse_ask_at
from streamvlm.runtime.cli_output import printable

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = "4"
WATCH = ("watch", "--max-new-tokens", MAX_NEW_TOKENS)


def run_main(
    argv: list[str], capfd, stdin: str | None = None, monkeypatch=None
) -> subprocess.CompletedProcess:
    """``main(argv)`` in this process, as a finished process: exit code, stdout, stderr.

    ``stdin`` (with ``monkeypatch``) is what the command reads from standard input.
    """
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits itself
        code = e.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def assert_cli_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""


def parse_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)  # stdout holds one JSON document and nothing else


# ------------------------------------------------------------------ watch


def test_watch_json_with_timed_and_final_questions(sample_video, capfd):
    proc = run_main(
        [
            *WATCH, str(sample_video), "--json", "--fps", "2",
            "--ask-at", "12.5:what just came in from the right?",
            "--ask-at", "4:what is moving?",
            "--ask", "what happened in the whole video?",
        ],
        capfd,
    )  # fmt: skip
    doc = parse_json(proc)
    assert doc["model"] == DEFAULT_MODEL and doc["model_card"] == model_card(DEFAULT_MODEL).to_dict()
    assert doc["model_card"]["kind"] == "bundled" and "synthetic world" in doc["model_card"]["can_answer"]
    assert doc["video"]["path"] == str(sample_video)
    assert doc["video"]["width"] == 320 and doc["video"]["height"] == 240
    assert doc["decoder"]["backend"] in ("pyav", "decord")
    assert doc["decoder"]["decode_errors"] == 0

    early, late, final = doc["answers"]  # --ask-at in time order, then --ask
    assert [a["kind"] for a in doc["answers"]] == ["ask-at", "ask-at", "ask"]
    assert early["question"] == "what is moving?" and early["requested_at"] == 4
    # Asked before the first frame later than the requested time: at 2 fps the last
    # frame seen is at most the requested time and less than half a second before it.
    for answer in (early, late):
        assert answer["requested_at"] - 0.5 < answer["asked_at"] <= answer["requested_at"]
    assert late["requested_at"] == 12.5
    assert final["requested_at"] is None
    assert final["asked_at"] == pytest.approx(doc["stats"]["stream_time"])
    assert final["asked_at"] > 19
    for answer in doc["answers"]:
        assert isinstance(answer["text"], str)
        # The bundled model knows only its world's words: to a question outside it, it
        # may end its turn at once, an empty answer of 0 new tokens.
        assert 0 <= answer["timings"]["new_tokens"] <= int(MAX_NEW_TOKENS)
        assert (answer["timings"]["new_tokens"] == 0) == (answer["text"] == "")
        assert answer["timings"]["total_s"] >= answer["timings"]["ttft_s"] >= 0
        assert answer["blocks"], "an answer attends to the blocks seen so far"
        assert max(b["t_end"] for b in answer["blocks"]) <= answer["asked_at"]
    # the bundled model's recommended context: two retrieved blocks and the newest two frames
    assert all(len(a["blocks"]) <= 3 for a in doc["answers"])
    assert max(b["t_end"] for b in final["blocks"]) == pytest.approx(final["asked_at"])

    stats = doc["stats"]
    assert stats["frames_seen"] == doc["sampling"]["frames_fed"] == 40
    assert stats["blocks"] >= 1 and sum(stats["bytes_per_tier"].values()) > 0
    assert doc["realtime_factor"] > 0


def test_watch_with_pruning_reports_tokens_kept(sample_video, capfd):
    proc = run_main(
        [*WATCH, str(sample_video), "--json", "--fps", "2", "--prune", "0.9", "--ask", "what is there?"],
        capfd,
    )
    doc = parse_json(proc)
    stats = doc["stats"]
    assert stats["frames_seen"] == 40
    assert stats["visual_tokens_kept"] == stats["tokens_stored"]
    # the sample's background is still and its shapes move: much is redundant, not all
    assert 0 < stats["visual_tokens_kept"] < 0.8 * stats["visual_tokens_seen"]
    assert doc["answers"][0]["text"]


def test_watch_real_footage_json(pancake_video, capfd):
    proc = run_main(
        [*WATCH, str(pancake_video), "--json", "--fps", "2", "--ask", "what is being cooked?"], capfd
    )
    doc = parse_json(proc)
    assert doc["video"]["width"] == 426 and doc["video"]["height"] == 240
    assert doc["video"]["duration"] == pytest.approx(310 / 30, abs=0.2)
    assert doc["stats"]["frames_seen"] == doc["sampling"]["frames_fed"]
    assert 19 <= doc["stats"]["frames_seen"] <= 22  # 10.3 s at 2 fps
    (answer,) = doc["answers"]
    assert answer["question"] == "what is being cooked?"
    assert answer["asked_at"] == pytest.approx(doc["stats"]["stream_time"])


def test_watch_text_output_and_progress(make_video, capfd):
    clip = make_video("clip4s.mp4", num_frames=32, width=96, height=64, fps=8.0)
    proc = run_main(
        [*WATCH, str(clip), "--fps", "2", "--ask-at", "1:what is there?", "--ask", "and now?", "--progress"],
        capfd,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "[1.0s] Q: what is there?"
    assert out[1].lstrip().startswith("A:")
    assert out[2] == "[3.5s] Q: and now?"
    assert out[3].lstrip().startswith("A:")
    assert "frame" in proc.stderr and "rtf=" in proc.stderr and "held=" in proc.stderr
    assert "watched 8 frames" in proc.stderr


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (DEFAULT_MODEL, f"model {DEFAULT_MODEL} (bundled): knows only streamvlm's synthetic world"),
        ("tiny-llava-ov", "model tiny-llava-ov (random): random weights, for testing streamvlm's mechanics"),
    ],
)
def test_watch_says_in_one_line_what_the_model_can_answer(model, says, make_video, capfd):
    """Before the answers, one stderr line names the model and what its answers are worth."""
    clip = make_video("clip1s.mp4", num_frames=8, width=64, height=48, fps=8.0)
    proc = run_main([*WATCH, str(clip), "--model", model, "--ask", "what?", "--no-progress"], capfd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("watched 1 frames"), lines
    assert lines[0] == model_card(model).line() and lines[0].startswith(says)


def test_watch_interactive_reads_questions_until_an_empty_line(make_video, capfd, monkeypatch):
    clip = make_video("clip2s.mp4", num_frames=16, width=64, height=48, fps=8.0)
    stdin = "what do you see?\n   \nnever asked\n"
    proc = run_main([*WATCH, str(clip), "--fps", "2"], capfd, stdin, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Q: ") == 1
    assert "[1.5s] Q: what do you see?" in proc.stdout
    assert "never asked" not in proc.stdout


def test_watch_interactive_ends_at_eof_and_reports_bad_questions(make_video, capfd, monkeypatch):
    clip = make_video("clip1s.mp4", num_frames=8, width=64, height=48, fps=8.0)
    stdin = f"first?\n{'x' * 3000}\nlast?"  # EOF without a newline ends the session too
    proc = run_main([*WATCH, str(clip), "--fps", "4"], capfd, stdin, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Q: ") == 2
    assert "Q: first?" in proc.stdout and "Q: last?" in proc.stdout
    assert "error: question is 3000 characters" in proc.stderr  # reported, and the prompt goes on


class FakeSession:
    def __init__(self):
        self.asked = []

    def ask_stream(self, question, max_new_tokens):
        self.asked.append(question)
        yield from ("an ", "answer")


@pytest.mark.parametrize("word", ["quit", "exit", "QUIT"])
def test_interactive_stops_at_quit(monkeypatch, capsys, word):
    session = FakeSession()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"one?\n{word}\nnever?\n"))
    ask_from_stdin(session, max_new_tokens=4, max_chars=100, stream_t=2.0)
    assert session.asked == ["one?"]
    assert capsys.readouterr().out == "[2.0s] Q: one?\n       A: an answer\n"


@pytest.fixture
def bad_videos(tmp_path, sample_video):
    """A directory of videos that cannot be watched, cut from the bundled sample."""
    data = sample_video.read_bytes()
    (tmp_path / "notes.mp4").write_text("not a video\n")
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.mp4").write_bytes(bytes(64) + data[64:])
    return tmp_path


@pytest.mark.parametrize(
    ("video", "extra", "fragment"),
    [
        ("missing.mp4", [], "no such file"),
        ("notes.mp4", [], "cannot open"),
        ("truncated.mp4", [], "truncated.mp4"),
        ("header.mp4", [], "header.mp4"),
        ("SAMPLE", ["--ask", ""], "question is empty"),
        ("SAMPLE", ["--ask", "  \n "], "question is empty"),
        ("SAMPLE", ["--ask", "why? " * 500], "over the limit"),
        ("SAMPLE", ["--model", "no-such-model"], "no-such-model"),
        ("SAMPLE", ["--ask-at", "soon:what?"], "--ask-at"),
        ("SAMPLE", ["--ask-at", "12.5"], "--ask-at"),
        ("SAMPLE", ["--ask-at", "-3:what?"], "--ask-at"),
        ("SAMPLE", ["--ask-at", "3:"], "question is empty"),
        ("SAMPLE", ["--host-codec", "zip"], "--host-codec: expected one of"),
        ("SAMPLE", ["--prune", "nan"], "prune_threshold must be a cosine similarity"),
        ("SAMPLE", ["--fps", "0"], "--fps"),
        ("SAMPLE", ["--window", "-1"], "window"),
        ("SAMPLE", ["--max-new-tokens", "0"], "--max-new-tokens"),
        ("SAMPLE", ["--dtype", "int3"], "dtype"),
    ],
)
def test_watch_bad_input_is_one_error_line_and_exit_2(
    bad_videos, sample_video, video, extra, fragment, capfd
):
    path = sample_video if video == "SAMPLE" else bad_videos / video  # missing.mp4 is not there
    proc = run_main(["watch", str(path), *extra, "--ask-at", "1:still valid?"], capfd)
    assert_cli_error(proc, fragment)


def test_questions_are_checked_before_the_video_is_opened(tmp_path, capfd):
    # The question is reported although the video is missing too: nothing was opened yet.
    assert_cli_error(
        run_main(["watch", str(tmp_path / "missing.mp4"), "--ask", ""], capfd), "question is empty"
    )


def test_watch_on_disk_then_resume(tmp_path, sample_video, capfd):
    """--disk-dir keeps the session; --resume reopens it, answers over it, and can stream more."""
    directory = tmp_path / "session"
    base = ["watch", "--fps", "1", "--max-new-tokens", "2", "--json", "--no-progress"]
    first = run_main([*base, str(sample_video), "--disk-dir", str(directory), "--ask", "what?"], capfd)
    assert first.returncode == 0, first.stderr
    blocks = json.loads(first.stdout)["stats"]["blocks"]
    again = run_main([*base, "--resume", str(directory), "--top-k", "2", "--ask", "and then?"], capfd)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["stats"]["blocks"] == blocks and doc["video"] is None
    assert {b["tier"] for b in doc["answers"][0]["blocks"]} == {"disk"}
    more = run_main([*base, str(sample_video), "--resume", str(directory), "--ask", "more?"], capfd)
    doc = json.loads(more.stdout)
    assert doc["stats"]["blocks"] == 2 * blocks and doc["stats"]["stream_time"] > 20
    taken = run_main([*base, str(sample_video), "--disk-dir", str(directory), "--ask", "x"], capfd)
    assert taken.returncode == 2 and "already holds a session" in taken.stderr
    neither = run_main(["watch", "--ask", "x"], capfd)
    assert neither.returncode == 2 and "give a VIDEO" in neither.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("12.5:what?", TimedQuestion("what?", 12.5)),
        ("0:  at the start? ", TimedQuestion("at the start?", 0.0)),
        ("3:what time is it: now?", TimedQuestion("what time is it: now?", 3.0)),
    ],
)
def test_parse_ask_at(spec, expected):
    assert parse_ask_at(spec, max_chars=100) == expected


@pytest.mark.parametrize("spec", ["", "12", ":what?", "x:what?", "nan:what?", "inf:what?", "-1:what?"])
def test_parse_ask_at_rejects_bad_times(spec):
    with pytest.raises(ConfigError, match="SECONDS:QUESTION"):
        parse_ask_at(spec, max_chars=100)


def test_parse_ask_at_checks_the_question():
    with pytest.raises(InvalidQuestionError):
        parse_ask_at("1:" + "x" * 101, max_chars=100)


def test_control_characters_in_answers_are_escaped():
    assert printable("a\x1b[31mb\n\tc\u00e9\x00") == "a\\x1b[31mb\n\tc\u00e9\\x00"


# ------------------------------------------------------- the other commands


def test_info(capfd):
    proc = run_main(["info"], capfd)
    assert proc.returncode == 0, proc.stderr
    for name in ("streamvlm", "python", "torch", "transformers", "numpy", "av", "decord", "faiss"):
        assert any(line.split()[:1] == [name] for line in proc.stdout.splitlines()), name
    assert "decoder pyav" in proc.stdout and "device cpu" in proc.stdout
    models = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("model ")]
    assert models[0] == DEFAULT_MODEL and "tiny-qwen2.5-vl" in models and "geom-qwen2.5-vl-7b" in models
    assert f"model {DEFAULT_MODEL}  bundled, the default, checkpoint present: " in proc.stdout


def test_bench_stream_small_run_prints_json_and_plot(tmp_path, capfd):
    plot = tmp_path / "bench.png"
    proc = run_main(
        [
            "bench",
            "stream",
            "--lengths",
            "12,24",
            "--window",
            "4",
            "--questions",
            "2",
            "--json",
            "--plot",
            str(plot),
        ],
        capfd,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    frames = [c["frames"] for c in doc["checkpoints"]]
    assert frames == [12, 24]
    assert all(c["baseline_ttft_s"] > 0 and c["ttft_s"] > 0 for c in doc["checkpoints"])
    assert set(doc["ratios"]) >= {
        "encode_per_frame_end_over_start",
        "ttft_longest_over_first",
        "baseline_over_streamvlm_ttft",
    }
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_main(["bench", "stream", "--lengths", "x"], capfd).returncode == 2


def test_bench_stream_measures_the_tier_codecs_against_a_codec_baseline(capfd):
    """--codec-baseline streams the same frames into a second session (host and disk at that
    codec) and reports the first session's encode time and TTFT over it, per checkpoint."""
    args = ["bench", "stream", "--lengths", "12,24", "--window", "4", "--questions", "1"]
    args += ["--host-codec", "kivi2", "--codec-baseline", "identity", "--baseline-cap-s", "0"]
    proc = run_main([*args, "--json"], capfd)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["config"]["host_codec"] == "kivi2" and doc["config"]["codec_baseline"] == "identity"
    cps = doc["checkpoints"]
    assert all(c["codec_baseline_encode_ms_per_frame"] > 0 and c["codec_baseline_ttft_s"] > 0 for c in cps)
    ratios = doc["ratios"]
    want = [c["encode_ms_per_frame"] / c["codec_baseline_encode_ms_per_frame"] for c in cps]
    assert ratios["encode_per_frame_over_codec_baseline"] == pytest.approx(want)
    assert len(ratios["ttft_over_codec_baseline"]) == 2
    text = run_main(args, capfd)
    assert text.returncode == 0, text.stderr
    assert "encode_per_frame_over_codec_baseline: [" in text.stdout
    assert "codec-baseline ms/frame" in text.stdout


def test_synth_make_writes_video_and_sidecar(tmp_path, capfd):
    out = tmp_path / "world.mp4"
    proc = run_main(["synth", "make", "--seconds", "12", "--out", str(out), "--seed", "3"], capfd)
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["questions"] and out.stat().st_size > 0
    bad = run_main(["synth", "make", "--seconds", "-1", "--out", str(out)], capfd)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_train_tiny_smoke_run_saves_a_loadable_checkpoint(tmp_path, capfd):
    out = tmp_path / "model"
    args = [
        "train-tiny",
        "--out",
        str(out),
        "--steps",
        "2",
        "--vision-steps",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "2",
        "--eval-samples",
        "4",
    ]
    proc = run_main(args, capfd)
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stdout
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps_run"] == 2 and log["vision_steps_run"] == 2 and 0.0 <= log["held_out_accuracy"] <= 1.0
    from streamvlm import StreamVLM

    engine = StreamVLM.from_pretrained(str(out))
    assert engine.backend.family == "qwen2.5-vl" and len(engine.backend.tokenizer) < 100
    assert run_main(["train-tiny", "--out", str(out), "--steps", "0"], capfd).returncode == 2
    assert run_main(["train-tiny", "--out", str(out), "--vision-steps", "-1"], capfd).returncode == 2

    # a warm start continues the saved weights on the long-stream curriculum
    more = tmp_path / "more"
    again = [*args[:2], str(more), *args[3:], "--init", str(out), "--curriculum", "long"]
    proc = run_main(again, capfd)
    assert proc.returncode == 0, proc.stderr
    log = json.loads((more / "training_log.json").read_text())
    assert log["config"]["init"] == str(out) and log["config"]["curriculum"] == "long"
    bad = run_main([*again[:-4], "--init", str(tmp_path)], capfd)
    assert_cli_error(bad, "no checkpoint there")

    proc = run_main(["eval", "clips", "--model", str(more), "--clips", "6", "--json"], capfd)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["clips"] == 6 == sum(f["clips"] for f in doc["per_family"].values())
    assert 0.0 <= doc["overall"] <= 1.0
    assert_cli_error(run_main(["eval", "clips", "--clips", "0"], capfd), "--clips")


# -------------------------------------------------------- the entry point


def test_usage_errors_exit_2(capfd):
    assert_cli_error(run_main(["watch"], capfd), "VIDEO")
    assert_cli_error(run_main(["frobnicate"], capfd), "frobnicate")
    assert_cli_error(run_main(["watch", "x.mp4", "--fps", "two"], capfd), "--fps")


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("streamvlm.info.cmd_info", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


# Bad input each command rejects before any heavy import, as a shell runs it: a real
# process, exit code 2 and one `error:` line. TMP is the test's temporary directory.
SMOKE = {  # command: (arguments, fragment of the error line)
    "watch": (["watch", "TMP/clip.mp4", "--fps", "0"], "--fps must be > 0"),
    "info": (["info", "--bogus"], "unrecognized arguments: --bogus"),
    "bench stream": (["bench", "stream", "--lengths", "x"], "--lengths"),
    "bench quant": (["bench", "quant", "--frames", "x"], "--frames"),  # argparse's: --codecs imports torch
    "bench serve": (["bench", "serve", "--sessions", "0"], "--sessions"),
    "synth": (["synth", "make", "--seconds", "-1", "--out", "TMP/x.mp4"], "--seconds"),
    "train-tiny": (["train-tiny", "--out", "TMP/model", "--vision-steps", "-1"], "--vision-steps"),
    "serve": (["serve", "--port", "70000"], "--port must be between 0 and 65535"),
    "stream": (["stream", "--server", "http://127.0.0.1:9", "--file", "TMP/x.mp4", "--fps", "-1"], "--fps"),
    "demo": (["demo", "--port", "70000"], "--port must be between 0 and 65535"),
    "eval": (["eval", "clips", "--clips", "0"], "--clips must be >= 1"),
}


@pytest.mark.parametrize("command", list(SMOKE))
def test_each_command_as_a_process_exits_2_with_one_error_line(command, tmp_path):
    argv, fragment = SMOKE[command]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "streamvlm.cli", *(a.replace("TMP", str(tmp_path)) for a in argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert_cli_error(proc, fragment)


def test_building_the_parser_imports_neither_torch_nor_transformers():
    """`streamvlm --help` and argument errors must not pay seconds of heavy imports."""
    code = "import sys; from streamvlm.cli import build_parser; build_parser(); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
