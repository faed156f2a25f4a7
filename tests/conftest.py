"""Shared fixtures: paths to the bundled and the shared sample videos, and a clip writer.

Also sets ``TRITON_INTERPRET=1`` on machines without a CUDA GPU, before any test module is
imported: triton reads it once, when it is first imported, and other modules (through
torch or transformers) may import it before tests/test_kernels_triton.py does. Without a
GPU the interpreter is the only way a Triton kernel can run, so nothing else loses by it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO_ROOT.parent / "shared" / "videos"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """The bundled synthetic clip (320x240, 8 fps, 20 s); `make sample` regenerates it."""
    path = REPO_ROOT / "assets" / "sample.mp4"
    assert path.is_file(), f"{path} is missing; run: python -m streamvlm.samples {path}"
    return path


def shared_video(name: str) -> Path:
    """A file of real camera footage from ../shared/videos/, or skip the test."""
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real footage {path} is not present on this machine")
    return path


@pytest.fixture
def pancake_video() -> Path:
    """Real camera footage: Matroska, h264, 426x240, 30 fps, 310 frames."""
    return shared_video("flipping_a_pancake.mkv")


@pytest.fixture
def make_video(tmp_path):
    """``make_video(name="clip.mp4", num_frames=16, width=64, height=48, fps=8.0, seed=0)``
    writes a short synthetic H.264 clip under the test's tmp_path and returns its path."""
    from streamvlm.samples import write_video

    def _make(name: str = "clip.mp4", **kwargs) -> Path:
        return write_video(tmp_path / name, **kwargs)

    return _make


@pytest.fixture(scope="module")
def geom_cache(tmp_path_factory):
    """``$STREAMVLM_CACHE`` (made checkpoints kept between runs) or a directory for this test
    module, removed after it: the four checkpoints take 8 GB, and pytest keeps its last three runs."""
    root = os.environ.get("STREAMVLM_CACHE")
    temporary = None if root else tmp_path_factory.mktemp("streamvlm-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STREAMVLM_CACHE", root or str(temporary))
        yield root or str(temporary)
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
