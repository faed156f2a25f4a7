"""A plain run prints nothing on stderr but streamvlm's own lines; verbose output lets the libraries speak."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from streamvlm import output
from streamvlm.models.loading import load_backend
from streamvlm.models.tiny import TINY_QWEN, save_tiny_checkpoint

QUESTION = "What digit did the diamond show?"

# Every line `streamvlm watch` itself may write on stderr without --progress: its
# summary, and its notice about undecodable packets.
OWN_STDERR_LINES = (
    re.compile(
        r"watched \d+ frames, [\d.]+s of stream in [\d.]+s \([\d.]+x real time\); \d+ blocks, .+ held"
    ),
    re.compile(r"warning: \d+ packet\(s\) of .+ could not be decoded and were skipped"),
    re.compile(r"model \S+ \((bundled|random)\): .+"),  # what the model can answer (models/catalog.py)
)


def test_watch_prints_only_its_own_lines_on_stderr(repo_root):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    env["PYTHONPATH"] = str(repo_root)
    command = [
        sys.executable,
        "-m",
        "streamvlm.cli",
        *"watch assets/shapes.mp4 --fps 1".split(),
        "--ask",
        QUESTION,
    ]
    run = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert re.search(r"A: 7\b", run.stdout), run.stdout
    foreign = [
        line for line in run.stderr.splitlines() if not any(p.fullmatch(line) for p in OWN_STDERR_LINES)
    ]
    assert not foreign, "stderr lines streamvlm did not write:\n" + "\n".join(foreign)


@pytest.fixture
def unconfigured(monkeypatch):
    """Output as in a fresh process (configure_output not called); put back as it was afterwards."""
    level = logging.getLogger("transformers").level
    monkeypatch.setattr(output, "_verbose", None)
    monkeypatch.setattr(output, "_appliers", list(output._appliers))
    yield
    output.configure_output(True)  # undoes a quiet configuration
    logging.getLogger("transformers").setLevel(level)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen")
    save_tiny_checkpoint(TINY_QWEN, path)
    return str(path)


@pytest.mark.parametrize("verbose", [False, True])
def test_weight_loading_bar_only_when_verbose(unconfigured, checkpoint, capsys, verbose):
    output.configure_output(verbose)
    load_backend(checkpoint, device="cpu")
    assert ("Loading weights" in capsys.readouterr().err) is verbose


def test_library_use_gets_no_weight_loading_bar(unconfigured, checkpoint, capsys):
    load_backend(checkpoint, device="cpu")  # configure_output never called
    assert "Loading weights" not in capsys.readouterr().err


def test_quiet_output_keeps_transformers_to_errors_and_verbose_restores_it(unconfigured):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    output.configure_output(False)
    assert hf_logging.get_verbosity() == logging.ERROR
    output.configure_output(True)
    assert hf_logging.get_verbosity() == before


def test_a_module_imported_after_configure_output_applies_it_at_once(unconfigured):
    seen: list[bool] = []
    output.configure_output(False)
    output.when_configured(seen.append)
    output.configure_output(True)
    assert seen == [False, True]
