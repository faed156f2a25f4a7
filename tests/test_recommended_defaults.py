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
    recommends (with its 16-frame window), every sidecar question at its time, through the
    real video file."""
    config = StreamEvalConfig(
        seconds=60, seeds=(3,), questions=6, configs=("default", "top2-contiguous-w2"), window=16
    )
    result = run_stream_eval(config, log=lambda _: None)
    by = {
        c: [(o.question, o.asked_at, o.answer) for o in result.outcomes if o.config == c]
        for c in config.configs
    }
    assert len(by["default"]) == 6 and by["default"] == by["top2-contiguous-w2"]
    # two retrieved blocks and the newest two frames, not every block of the stream
    late = [o for o in result.outcomes if o.config == "default" and o.asked_at >= 30]
    assert late and all(o.blocks_attended <= 3 for o in late)
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


@needs_shipped
def test_a_question_asks_for_every_block_with_top_k_all(synth):
    """A session of the bundled model retrieves two blocks; ``top_k="all"`` (the websocket's
    and the OpenAI endpoint's ``"top_k": "all"``, ``--top-k all``) attends every block."""
    import numpy as np

    from streamvlm.servers.protocol import ProtocolError, check_question_option

    session = synth.new_session()
    rng = np.random.default_rng(0)
    for i in range(12):
        session.add_frame(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), float(i))
    default = session.ask("What is on screen now?", max_new_tokens=2)
    every = session.ask("What is on screen now?", max_new_tokens=2, top_k="all")
    assert len(default.blocks) <= 3 and len(every.blocks) == session.stats().blocks == 6
    for bad in ("some", 0, True):
        with pytest.raises(ConfigError, match="top_k"):
            session.ask("What is on screen now?", top_k=bad)
    check_question_option("top_k", "all", 64)
    for bad in ("some", 0, 1.5):
        with pytest.raises(ProtocolError, match="top_k"):
            check_question_option("top_k", bad, 64)
