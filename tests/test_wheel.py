"""The wheel installs whole: built from the checkout and installed into a fresh virtualenv
(no editable install, no checkout on the path), `streamvlm watch` answers with the
bundled model it carries.

The fresh venv gets its dependencies (torch & co.) from the venv running these tests: a
`.pth` file puts a directory of links to that venv's site-packages on its path, minus
streamvlm itself (the editable finder, its `.pth` and dist-info). Installing the
dependencies for real takes ~3 min and ~6 GB here (pip pulls CUDA torch);
`--system-site-packages` would see the base interpreter's packages, not this venv's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamvlm.errors import ModelNotFoundError
from streamvlm.models import bundled
from streamvlm.models.bundled import TINY_SYNTH

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "streamvlm" / "models" / "checkpoints" / TINY_SYNTH
IN_WHEEL = f"streamvlm/models/checkpoints/{TINY_SYNTH}/"
# What the build reads from a checkout: pyproject.toml's readme and packages (and a
# MANIFEST.in, should one appear).
BUILD_INPUTS = ("pyproject.toml", "README.md", "MANIFEST.in", "streamvlm")
# The checkpoint's files that loading does not read and the wheel therefore leaves out.
NOT_SHIPPED = {"training_log.json"}


@dataclass(frozen=True)
class FreshVenv:
    """A venv with the built wheel installed, and where things are in it."""

    wheel: Path
    python: Path
    streamvlm: Path  # the console script
    site_packages: Path
    pip_output: str
    cwd: Path  # a directory outside the checkout to run from
    env: dict[str, str]


def _run(args: list, env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _build_wheel(out: Path) -> Path:
    """``pip wheel`` of a copy of the checkout's build inputs.

    A copy, because an in-tree build writes build/ and *.egg-info into the checkout and
    packages whatever a stale build/lib still holds. No build isolation: the setuptools of
    this venv builds it, offline, in ~2 s.
    """
    src = out / "src"
    src.mkdir(parents=True)
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--wheel-dir", str(out / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (out / "dist").glob("streamvlm-*.whl")
    return wheel


def _link_dependencies(into: Path) -> None:
    """Links to everything in this interpreter's site-packages except streamvlm itself."""
    into.mkdir()
    for directory in {Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("platlib"))}:
        for entry in directory.iterdir():
            own = entry.name.startswith(("streamvlm", "__editable__")) or entry.suffix == ".pth"
            if not own and not (into / entry.name).exists():
                (into / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> FreshVenv:
    root = tmp_path_factory.mktemp("fresh")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cwd = root / "elsewhere"
    cwd.mkdir()
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env, cwd)
    site_packages = Path(purelib.stdout.strip())
    _link_dependencies(root / "dependencies")
    (site_packages / "dependencies.pth").write_text(f"{root / 'dependencies'}\n")
    # pip (one of the linked dependencies) installs into the fresh venv; --no-index: the
    # wheel's requirements must be met by what is already there, so nothing is downloaded.
    pip = _run([python, "-m", "pip", "install", "--no-index", wheel], env, cwd)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return FreshVenv(
        wheel, python, venv / "bin" / "streamvlm", site_packages, pip.stdout + pip.stderr, cwd, env
    )


def _checkpoint_files(directory: Path) -> dict[str, str]:
    """File name -> sha256 of a checkpoint directory's files."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


SHIPPED = {name: digest for name, digest in _checkpoint_files(CHECKPOINT).items() if name not in NOT_SHIPPED}


def test_wheel_carries_the_checkpoint_files_loading_reads(wheel):
    """Not the training log: nothing reads it, and it would only make the wheel bigger."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = {
            n.removeprefix(IN_WHEEL): hashlib.sha256(archive.read(n)).hexdigest()
            for n in names
            if n.startswith(IN_WHEEL)
        }
    assert shipped == SHIPPED
    assert not [n for n in names if n.startswith(("assets/", "tests/", "docs/"))]


def test_pip_installs_the_wheel_without_an_error(fresh):
    assert re.search(r"^Successfully installed streamvlm-\S+$", fresh.pip_output, flags=re.MULTILINE)
    assert "error" not in fresh.pip_output.lower(), fresh.pip_output


def test_fresh_venv_imports_the_installed_wheel_not_the_checkout(fresh):
    probe = (
        "import sys, streamvlm\n"
        "from streamvlm.models.bundled import bundled_path\n"
        f"print(streamvlm.__file__); print(bundled_path({TINY_SYNTH!r})); print(*sys.path, sep='\\n')\n"
    )
    proc = _run([fresh.python, "-c", probe], fresh.env, fresh.cwd)
    assert proc.returncode == 0, proc.stderr
    module, checkpoint, *path = proc.stdout.splitlines()
    assert Path(module).is_relative_to(fresh.site_packages), module
    assert Path(checkpoint) == fresh.site_packages / IN_WHEEL.rstrip("/")
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(REPO)], path


def test_streamvlm_info_runs_from_the_wheel(fresh):
    proc = _run([fresh.streamvlm, "info"], fresh.env, fresh.cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_watch_from_the_wheel_answers_with_the_bundled_model(fresh):
    """The README's `make watch` command, run as a user of the installed wheel would."""
    question = "What digit did the diamond show?"
    args = [fresh.streamvlm, "watch", REPO / "assets" / "shapes.mp4", "--fps", "1", "--ask", question]
    proc = _run(args, fresh.env, fresh.cwd)
    assert proc.returncode == 0, proc.stderr
    answers = re.findall(r"^\s*A: (.*)$", proc.stdout, flags=re.MULTILINE)
    assert answers == ["7"], proc.stdout


def test_bundled_model_is_found_in_a_zipped_package(fresh):
    """A package imported from a zip archive (the wheel itself) still hands
    ``from_pretrained`` a directory: an extracted copy, removed when the process exits."""
    probe = (
        "import hashlib, json, streamvlm\n"
        "from streamvlm.models.bundled import bundled_path\n"
        f"path = bundled_path({TINY_SYNTH!r})\n"
        "files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}\n"
        "print(json.dumps([streamvlm.__file__, str(path), files]))\n"
    )
    proc = _run([fresh.python, "-c", probe], dict(fresh.env, PYTHONPATH=str(fresh.wheel)), fresh.cwd)
    assert proc.returncode == 0, proc.stderr
    module, checkpoint, files = json.loads(proc.stdout)
    assert module.startswith(f"{fresh.wheel}{os.sep}"), module
    assert files == SHIPPED
    assert not Path(checkpoint).exists()  # the copy went with the process


def test_missing_bundled_checkpoint_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(bundled.BUNDLED, TINY_SYNTH, tmp_path / TINY_SYNTH)
    with pytest.raises(ModelNotFoundError) as info:
        bundled.bundled_path(TINY_SYNTH)
    message = str(info.value)
    assert f"train-tiny --out {tmp_path / TINY_SYNTH}" in message and "--model" in message
    assert "\n" not in message
