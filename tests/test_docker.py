"""The Docker files, checked without a Docker engine: what the images copy exists, the
compose file names the Dockerfiles, and the images' entrypoint really serves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_what_exists_and_serves_as_a_non_root_user(name):
    steps = instructions(DOCKER / name)
    assert steps[0][0] == "FROM"
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for kind, args in steps:
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY source {source} is missing"
                assert source.split("/")[0] not in ignored, f"{name}: {source} is in .dockerignore"
    run = " ".join(args for kind, args in steps if kind == "RUN")
    assert "torch==2.13.0" in run and "download.pytorch.org/whl/" in run
    assert 'pip install ".[server]"' in run
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in steps
    entrypoint = [args for kind, args in steps if kind == "ENTRYPOINT"]
    assert entrypoint == ['["streamvlm-entrypoint"]']
    assert "COPY" in {k for k, _ in steps} and any(
        "docker/entrypoint.sh" in a for k, a in steps if k == "COPY"
    )
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert "STREAMVLM_MODEL=streamvlm-tiny-synth" in env


def test_cpu_image_is_python_slim_and_cuda_image_is_an_nvidia_runtime():
    assert instructions(DOCKER / "Dockerfile.cpu")[0] == ("FROM", "python:3.12-slim")
    base = instructions(DOCKER / "Dockerfile.cuda")[0][1]
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    run = " ".join(a for k, a in instructions(DOCKER / "Dockerfile.cuda") if k == "RUN")
    assert "whl/cu" in run


def test_compose_file_names_the_dockerfiles_and_reserves_a_gpu():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"cpu", "gpu"} <= set(services)
    for service, dockerfile in (("cpu", "Dockerfile.cpu"), ("gpu", "Dockerfile.cuda")):
        build = services[service]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / dockerfile).resolve()
        assert any(str(p).endswith(":8000") for p in services[service]["ports"])
    devices = services["gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_entrypoint_serves_the_default_model_and_answers_health(tmp_path):
    """The entrypoint exactly as the images run it, with the default model the installed
    package carries, on a free loopback port."""
    from _server import default_sigint, wait_for_health

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "streamvlm").exists():
        pytest.skip("the streamvlm console script is not installed next to this interpreter")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        STREAMVLM_HOST="127.0.0.1",
        STREAMVLM_PORT="0",
    )
    env.pop("STREAMVLM_MODEL", None)
    env.pop("STREAMVLM_API_KEY", None)
    proc = subprocess.Popen(
        ["sh", str(DOCKER / "entrypoint.sh"), "--device", "cpu", "--log-level", "warning"],
        env=env,
        cwd=tmp_path,  # not the checkout: the image runs from the user's home
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        lines = []
        while not (match := re.search(r"serving (\S+) on http://127\.0\.0\.1:(\d+)", "".join(lines))):
            line = proc.stderr.readline()
            assert line, f"the entrypoint exited: {''.join(lines)}"
            lines.append(line)
        assert match.group(1).endswith("streamvlm-tiny-synth")  # the checkpoint the name resolved to
        base = f"http://127.0.0.1:{match.group(2)}"
        status, body = wait_for_health(base, proc)
        assert status == 200 and body["status"] == "ok" and body["model"].endswith("streamvlm-tiny-synth")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130  # `exec`: the signal reached streamvlm itself, not a shell
