"""A checkpoint's recommended answering options (models/recommended.py) and ``eval streams``,
which measures what they give on long streams against named configurations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamvlm import StreamVLM
from streamvlm.config import MemoryConfig
from streamvlm.errors import ConfigError
from streamvlm.eval.streams import StreamEvalConfig, run_stream_eval
from streamvlm.models.bundled import BUNDLED, TINY_SYNTH
from streamvlm.models.recommended import FILENAME, memory_defaults_of

SHIPPED = (BUNDLED[TINY_SYNTH] / "config.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="the trained checkpoint is not in the package")


@pytest.fixture(scope="module")
def synth():
    return StreamVLM.from_pretrained(TINY_SYNTH, device="cpu", dtype="float32")


@needs_shipped
def test_sessions_of_the_bundled_model_start_from_its_recommendation(synth):
    recommended = json.loads((BUNDLED[TINY_SYNTH] / FILENAME).read_text())["memory_defaults"]
    assert synth.backend.memory_defaults == recommended
    memory = synth.new_session().memory
    recommended_fields = (
        memory.window,
        memory.top_k,
        memory.answer_window,
        memory.query_context,
        memory.position_mode,
    )
    assert recommended_fields == (16, 2, 2, "sink", "contiguous")
    # an option given wins, None included (top_k=None: every block, lossless)
    assert synth.memory(top_k=None, window=8).top_k is None
    assert synth.memory(window=8).top_k == 2 and synth.memory(window=8).window == 8
    # what is stored is never recommended: the rest are MemoryConfig's own defaults
    assert synth.memory().host_codec == MemoryConfig().host_codec


def test_models_built_in_code_recommend_nothing():
    engine = StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    assert engine.backend.memory_defaults == {}
    assert engine.new_session().memory == MemoryConfig()


def test_a_bad_recommendation_fails_in_one_line_naming_the_file(tmp_path):
    assert memory_defaults_of(str(tmp_path)) == {}
    cases = {
        "{": "not valid JSON",
        '{"memory_defaults": {"host_codec": "int8"}}': "may recommend only",
        '{"memory_defaults": {"top_k": 0}}': "top_k",
        '{"memory_defaults": [1]}': "must be an object",
    }
    for text, message in cases.items():
        (tmp_path / FILENAME).write_text(text)
        with pytest.raises(ConfigError, match=message) as e:
            memory_defaults_of(str(tmp_path))
        assert FILENAME in str(e.value) or message == "top_k"
        assert "\n" not in str(e.value)
    (tmp_path / FILENAME).write_text('{"memory_defaults": {"top_k": 3, "query_context": "sink"}}')
    assert memory_defaults_of(str(tmp_path)) == {"top_k": 3, "query_context": "sink"}


@needs_shipped
def test_eval_streams_default_is_the_recommended_configuration():
    """``default`` (no options) answers exactly as the named configuration the checkpoint
    recommends, every sidecar question at its time, through the real video file."""
    config = StreamEvalConfig(seconds=60, seeds=(3,), questions=6, configs=("default", "top2-contiguous-w2"))
    result = run_stream_eval(config, log=lambda _: None)
    by = {
        c: [(o.question, o.asked_at, o.answer) for o in result.outcomes if o.config == c]
        for c in config.configs
    }
    assert len(by["default"]) == 6 and by["default"] == by["top2-contiguous-w2"]
    accuracy = result.accuracy()
    assert accuracy["default"]["all"]["questions"] == 6
    assert sum(v["questions"] for k, v in accuracy["default"].items() if k != "all") == 6
    assert "all" in result.table()


def test_eval_streams_refuses_bad_options_in_one_line():
    for args in (
        ["--seeds", "a"],
        ["--configs", "top2,plain"],
        ["--configs", "lossless+vidkv"],
        ["--seconds", "5"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "streamvlm", "eval", "streams", *args], capture_output=True, text=True
        )
        assert run.returncode == 2, run
        assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
