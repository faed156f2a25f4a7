"""Running ``streamvlm`` as a shell does, for the tests of its errors (not a test module).

``run_cli`` also reports which heavy modules the command imported, so a test can check
that a mistake is refused before torch, transformers or Ray load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "transformers")
# Runs `streamvlm ARGS...` and prints, on stdout (which an error leaves empty), the heavy
# modules it imported.
WRAPPER = f"""
import sys
from streamvlm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(sorted(set({HEAVY!r}) & set(sys.modules)))
sys.exit(code)
"""


def run_cli(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The command as a shell runs it; returns the finished process and the heavy modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )
    imported = json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))
    return proc, imported


def assert_one_error_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
