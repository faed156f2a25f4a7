"""``streamvlm bench geometry`` (issue 15, item 6) on the smallest real-geometry model."""

from __future__ import annotations

import json
import math

import pytest
from conftest import shared_video

from streamvlm.cli import main

# geom-llava-ov-0.5b as released: 24 text layers x 2 KV heads x head_dim 64, keys and
# values, 2 bytes each in bfloat16; 196 LLM tokens a frame.
LLAVA_05B_KV_BYTES_PER_FRAME = 196 * 24 * 2 * 2 * 64 * 2


def test_bench_geometry_reports_tokens_bytes_span_and_seconds(geom_cache, capfd):
    video = shared_video("flipping_a_pancake.mkv")
    argv = ["bench", "geometry", "--model", "geom-llava-ov-0.5b", "--json", "--frames", "4"]
    code = main([*argv, "--video", str(video), "--codecs", "identity,kivi2,vidkv", "--repeats", "1"])
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert {"tokens_per_frame", "bytes_per_hour_1fps", "max_position_span_used", "time_breakdown_s"} <= set(
        doc
    )
    assert doc["tokens_per_frame"] == {"checkpoint": 196, "streaming_default": 196}
    assert (doc["layers"], doc["full_depth_layers"]) == (2, 24)
    per_frame, per_hour = doc["kv_bytes_per_frame"], doc["bytes_per_hour_1fps"]
    metadata = doc["metadata_bytes_per_frame"]
    # identity: the bfloat16 KV at full depth, the block's positions, mask and summary, the metadata
    assert (
        LLAVA_05B_KV_BYTES_PER_FRAME + metadata
        < per_frame["identity"]
        < 1.01 * LLAVA_05B_KV_BYTES_PER_FRAME + metadata
    )
    assert per_hour["identity"] > per_hour["kivi2"] > per_hour["vidkv"] > 0
    assert per_hour == pytest.approx({name: 3600 * b for name, b in per_frame.items()})
    bits = {c["codec"]: c["bits_per_element"] for c in doc["codecs"]}
    assert bits["identity"] == 16 and bits["vidkv"] < 2
    # 4 frames of 196 tokens after the sink, far below LLaVA-OneVision's 32,768
    assert 4 * 196 < doc["max_position_span_used"] < 32768
    seconds = doc["time_breakdown_s"]
    for step in (
        "preprocess_per_frame",
        "vision_tower_per_frame",
        "prefill_per_layer_per_frame",
        "key_summary_per_layer_per_block",
        "index_search_3600_blocks",
    ):
        assert math.isfinite(seconds[step]) and seconds[step] > 0, step
    assert set(seconds["codec_encode_per_layer_per_block"]) == {"identity", "kivi2", "vidkv"}
    assert all(c["copy_gb_s"] > 0 and c["encode_gb_s"] > 0 for c in doc["codecs"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "tiny-qwen2.5-vl"], "real-geometry model"),
        (["--model", "geom-llava-ov-0.5b", "--codecs", "vidkv,nope"], "--codecs takes names among"),
        (["--model", "geom-llava-ov-0.5b", "--frames", "0"], "--frames and --repeats"),
    ],
)
def test_bench_geometry_refuses_bad_options_in_one_line(args, fragment, capfd):
    assert main(["bench", "geometry", *args]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
