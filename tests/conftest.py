"""Shared fixtures: paths to the bundled and the shared sample videos, and a clip writer."""

from __future__ import annotations

from pathlib import Path

import pytest

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
