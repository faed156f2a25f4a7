"""Errors before heavy work: every ``streamvlm`` mistake is one ``error:`` line and exit code 2,
and the cheap ones (paths, options, the device) are found before torch is imported.

The cheap cases run the real command in a subprocess through a small wrapper that reports,
after the command returns, whether torch or transformers were imported. How fast that is
(well under a second) is measured in the report of issue 16, not asserted here.
"""

from __future__ import annotations

import json

import pytest
from _cli import assert_one_error_line, run_cli

from streamvlm.cli import main
from streamvlm.cli_options import gpu_driver_present
from streamvlm.config import DTYPE_NAMES


@pytest.fixture
def places(tmp_path, sample_video):
    """A working directory with the sample video (clip.mp4), a non-empty directory, a file,
    an empty directory and a text file named text.mp4."""
    (tmp_path / "clip.mp4").write_bytes(sample_video.read_bytes())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("kept\n")
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.mp4").write_text("a text file named like a video\n")
    return tmp_path


WATCH = ["watch", "clip.mp4", "--ask", "what?"]
CHEAP = {  # case: (arguments, fragment of the error line); run in `places`
    "missing video": (["watch", "missing.mp4"], "no such file"),
    "video is a directory": (["watch", "empty"], "is a directory"),
    "video is a text file": (["watch", "text.mp4", "--ask", "x"], "not a video file"),
    "unknown model": ([*WATCH, "--model", "nope"], "unknown model 'nope'"),
    "model directory without config": ([*WATCH, "--model", "empty"], "no config.json"),
    "serve an unknown model": (["serve", "--model", "./nope"], "unknown model './nope'"),
    "demo an unknown model": (["demo", "--model", "nope"], "unknown model"),
    "eval needle an unknown model": (["eval", "needle", "--model", "nope"], "unknown model"),
    "eval clips an unknown model": (["eval", "clips", "--model", "nope"], "unknown model"),
    "bench stream an unknown model": (["bench", "stream", "--model", "nope"], "unknown model"),
    "bench stream no questions": (["bench", "stream", "--questions", "0"], "--questions must be >= 1"),
    "bench stream an unknown codec baseline": (
        ["bench", "stream", "--codec-baseline", "nope"],
        "--codec-baseline: expected one of",
    ),
    "bench quant an unknown model": (["bench", "quant", "--kv-sets", "synthetic,nope"], "unknown model"),
    "bench geometry a missing video": (
        ["bench", "geometry", "--model", "geom-qwen2.5-vl-3b", "--video", "missing.mp4"],
        "no such file",
    ),
    "max-new-tokens 0": ([*WATCH, "--max-new-tokens", "0"], "--max-new-tokens"),
    "max-new-tokens past the limit": ([*WATCH, "--max-new-tokens", "5000"], "at most 4096 tokens"),
    "dtype float8": ([*WATCH, "--dtype", "float8"], "--dtype"),
    "unknown attention": ([*WATCH, "--attn", "fast"], "--attn"),
    "max-pixels 0": ([*WATCH, "--max-pixels", "0"], "--max-pixels"),
    "missing resume dir": (["watch", "--resume", "nowhere", "--ask", "x"], "--resume nowhere does not exist"),
    "resume an empty directory": (["watch", "--resume", "empty", "--ask", "x"], "--resume empty is empty"),
    "unknown device": ([*WATCH, "--device", "gpu"], "--device gpu: unknown device; use cpu, cuda or cuda:N"),
    "flash attention on the CPU": (
        [*WATCH, "--device", "cpu", "--attn", "flash_attention_2"],
        "--attn flash_attention_2 runs on CUDA only",
    ),
    "top-k 0": ([*WATCH, "--top-k", "0"], "--top-k: expected a number of blocks >= 1"),
    "resume names a file": (["watch", "--resume", "a-file", "--ask", "x"], "is not a directory"),
    "non-empty disk dir": ([*WATCH, "--disk-dir", "full"], "--disk-dir full is not empty"),
    "disk dir is a file": ([*WATCH, "--disk-dir", "a-file"], "is a file"),
    "resume and disk dir": (["watch", "--resume", "empty", "--disk-dir", "x"], "leave out --disk-dir"),
    "resume and prune": (["watch", "--resume", "empty", "--prune", "0.9"], "--prune cannot change"),
    "resume and host codec": (["watch", "--resume", "empty", "--host-codec", "int8"], "--host-codec"),
    "prune above 1": ([*WATCH, "--prune", "2"], "prunes nothing"),
    "disk codec without disk": ([*WATCH, "--disk-codec", "int8"], "--disk-codec does nothing"),
    "host codec, no host": (
        [*WATCH, "--host-codec", "int8", "--host-bytes", "0"],
        "--host-codec does nothing",
    ),
    "device bytes": ([*WATCH, "--device-bytes", "lots"], "--device-bytes"),
    "unknown host codec": ([*WATCH, "--host-codec", "nope"], "--host-codec: expected one of identity"),
    "unknown disk codec": (
        [*WATCH, "--disk-dir", "empty", "--disk-codec", "nope"],
        "--disk-codec: expected one of identity",
    ),
    "fps 0": ([*WATCH, "--fps", "0"], "--fps"),
    "empty question": (["watch", "clip.mp4", "--ask", ""], "question is empty"),
    "stream a missing file": (
        ["stream", "--server", "http://127.0.0.1:9", "--file", "missing.mp4"],
        "no such file",
    ),
    "stream for no time": (
        ["stream", "--server", "http://127.0.0.1:9", "--webcam", "0", "--duration", "0"],
        "--duration",
    ),
    "demo max-new-tokens": (["demo", "--max-new-tokens", "0"], "--max-new-tokens"),
    "serve dtype": (["serve", "--dtype", "float8"], "--dtype"),
    "eval clips": (["eval", "clips", "--clips", "0"], "--clips must be >= 1"),
    "train into a file": (["train-tiny", "--out", "a-file"], "--out a-file is a file"),
    "train from nowhere": (
        ["train-tiny", "--out", "model", "--init", "nowhere"],
        "--init nowhere does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CHEAP))
def test_cheap_mistakes_fail_in_one_line_before_torch_is_imported(case, places):
    argv, fragment = CHEAP[case]
    proc, imported = run_cli(argv, places)
    assert_one_error_line(proc, fragment)
    assert imported == [], f"{case}: imported {imported} before refusing"


@pytest.mark.skipif(gpu_driver_present(), reason="this machine may have CUDA")
@pytest.mark.parametrize("command", [["watch", "clip.mp4", "--ask", "x"], ["serve"], ["demo"]])
def test_cuda_without_a_gpu_driver_fails_before_torch_is_imported(command, places):
    proc, imported = run_cli([*command, "--device", "cuda:0"], places)
    assert_one_error_line(proc, "no CUDA; use --device cpu")
    assert imported == []


def test_stream_refuses_impossible_ranges_before_connecting(places):
    proc, _ = run_cli(
        ["stream", "--server", "http://127.0.0.1:9", "--file", "clip.mp4", "--top-k", "0"], places
    )
    assert_one_error_line(proc, "--top-k: expected a number of blocks >= 1 or 'all'")


def test_every_dtype_name_the_cli_accepts_loads():
    """--dtype is refused by argparse from config.DTYPE_NAMES, the loader's own list."""
    import torch

    from streamvlm.models.loading import resolve_dtype

    loaded = {name: resolve_dtype(name, torch.device("cpu")) for name in DTYPE_NAMES}
    assert loaded["bf16"] is loaded["bfloat16"] is torch.bfloat16
    assert loaded["fp16"] is torch.float16 and loaded["fp32"] is torch.float32


def watch_json(argv: list[str], capfd) -> tuple[dict, str]:
    """``streamvlm watch ... --json`` in this process: its document and its stderr."""
    assert main(["watch", "--fps", "1", "--max-new-tokens", "1", "--json", "--no-progress", *argv]) == 0
    out, err = capfd.readouterr()
    return json.loads(out), err


def test_tier_budgets_act_and_an_idle_host_codec_is_named(sample_video, capfd):
    """--device-bytes moves older blocks to host RAM, where --host-codec acts; with the default
    budget every block stays on the device and the codec is said to have done nothing."""
    doc, err = watch_json(
        [str(sample_video), "--device-bytes", "1", "--host-codec", "int8", "--ask", "x"], capfd
    )
    assert doc["stats"]["bytes_per_tier"]["host"] > 0
    assert "did nothing" not in err
    doc, err = watch_json([str(sample_video), "--host-codec", "int8", "--ask", "x"], capfd)
    assert doc["stats"]["bytes_per_tier"]["host"] == 0
    assert err.strip().splitlines() == [
        "warning: --host-codec int8 did nothing: every block stayed on the device; "
        "give a smaller --device-bytes to keep older blocks in host RAM"
    ]


def test_window_0_is_legal_and_says_what_it_means(sample_video, capfd):
    doc, err = watch_json([str(sample_video), "--window", "0", "--ask", "x"], capfd)
    assert doc["stats"]["blocks"] > 0
    assert err.strip().splitlines() == [
        "note: --window 0 encodes each chunk over the system prompt alone, without the frames before it"
    ]
