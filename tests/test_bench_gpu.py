"""``streamvlm bench gpu`` (issue 20, item 6): the dry run a CPU runs, through the CLI.

On this machine the command runs as a dry run (no CUDA): the numba kernels against the
reference at 64 tokens, and the smallest real-geometry model streamed for one frame after
its warm-up chunk. The test checks that every figure a GPU run reports is there and sane;
the figures themselves are the GPU's to give.
"""

from __future__ import annotations

import json
import math

import pytest
from _cli import assert_one_error_line, run_cli

MODEL = "geom-llava-ov-0.5b"  # the smallest geometry: the 7B ones take minutes a frame on 2 cores
SPLIT_STEPS = {
    "video_decode",
    "preprocess",
    "vision_tower",
    "prefill_per_layer",
    "key_summary_per_layer",
    "codec_encode_per_layer",
    "transfers",
}


def test_the_dry_run_reports_every_figure_and_exact_kernels(geom_cache, tmp_path):
    pytest.importorskip("numba")  # the CPU kernels: without them the reference is checked against itself
    proc, _ = run_cli(
        ["bench", "gpu", "--models", MODEL, "--frames", "1", "--repeats", "1", "--json"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])  # the wrapper's last line follows

    assert (doc["device"], doc["dry_run"], doc["dtype"]) == ("cpu", True, "float32")
    checks = doc["kernel_checks"]
    assert {(c["codec"], c["kind"], c["op"]) for c in checks} == {
        (codec, kind, op)
        for codec in ("kivi2", "kivi4", "vidkv")
        for kind in ("key", "value")
        for op in ("encode", "decode")
    }
    for c in checks:
        assert c["path"] == "cpu" and c["exact"] and c["max_abs_diff"] == 0, c
        assert c["shape"] == [4, 64, 128] and "dry run: 64 tokens" in c["note"], c
        assert c["fast_s"] > 0 and c["reference_s"] > 0, c
    assert doc["kernels_exact"] is True

    m = doc["models"][MODEL]
    assert (m["layers"], m["full_depth_layers"], m["vision_blocks"], m["full_depth_vision_blocks"]) == (
        2,
        24,
        2,
        26,
    )
    assert (m["chunk_frames"], m["frames"], m["tokens_per_frame"]) == (1, 1, 196)
    # the recommended memory, its device tier scaled from 24 layers to the checkpoint's 2
    assert m["memory"]["host_codec"] == "vidkv"
    assert m["memory"]["device_bytes"] == m["memory"]["device_bytes_recommended"] * 2 // 24
    assert set(m["split_s_per_frame"]) == SPLIT_STEPS
    split = m["split_s_per_frame"]
    assert split["transfers"] == 0  # a CPU's host tier is the same memory
    assert all(math.isfinite(s) and s > 0 for step, s in split.items() if step != "transfers"), split
    # full depth: per-layer steps x 24, the vision tower x 26/2, the rest as measured
    full = (
        split["video_decode"]
        + split["preprocess"]
        + 13 * split["vision_tower"]
        + 24 * (split["prefill_per_layer"] + split["key_summary_per_layer"] + split["codec_encode_per_layer"])
    )
    assert m["frames_per_s_full_depth"] == pytest.approx(1 / full)
    assert 0 < m["frames_per_s_full_depth"] < m["frames_per_s"]
    # one measured frame: the first quarter is the last
    assert m["per_frame_ms_first"] == m["per_frame_ms_last"] == pytest.approx(1e3 / m["frames_per_s"])
    assert m["per_frame_last_over_first"] == 1
    assert m["ttft_s"] > 0
    assert m["peak_device_bytes"] > 500 << 20 and "RSS" in m["peak_device_bytes_is"]  # weights alone ~0.9 GB

    assert doc["top_level_model"] == MODEL and doc["target_frames_per_s"] == 16
    for key in ("frames_per_s", "frames_per_s_full_depth", "ttft_s", "peak_device_bytes"):
        assert doc[key] == m[key], key


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--models", "tiny-qwen2.5-vl"], "--models takes names among"),
        (["--models", ","], "--models takes names among"),
        (["--frames", "0"], "--frames and --repeats must be >= 1"),
        (["--repeats", "0"], "--frames and --repeats must be >= 1"),
        (["--dry-run", "--device", "cuda"], "--dry-run runs on the CPU"),
        (["--video", "no-such-file.mp4"], "no such file"),
    ],
)
def test_bad_options_fail_in_one_line_before_torch(args, fragment, tmp_path):
    proc, imported = run_cli(["bench", "gpu", *args], cwd=tmp_path)
    assert_one_error_line(proc, fragment)
    assert imported == []
