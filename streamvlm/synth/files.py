"""Write a ``World`` as an H.264 video plus a JSON sidecar, and read the sidecar back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .questions import Question, sample_questions
from .world import World

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
SIDECAR_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    """Where the sidecar of video ``path`` lives: the same name with ``.json``."""
    return Path(path).with_suffix(".json")


def write(
    world: World,
    path: str | Path,
    questions: Sequence[Question] | None = None,
    n_questions: int = 16,
    crf: int = 18,
) -> Path:
    """Encode every frame of ``world`` to ``path`` (H.264, yuv420p) and write the sidecar
    ``path.with_suffix('.json')``: the world (arguments, scenes, events) and questions.

    ``questions``: the questions to store; by default ``n_questions`` drawn with
    ``sample_questions`` from a generator seeded by the world's seed. ``crf`` 18 keeps
    the flat object colours close to their RGB values after coding. Returns the video path.
    """
    from ..ingest.synthetic import write_video  # PyAV only when writing files

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"video name must end in one of {', '.join(VIDEO_SUFFIXES)}, got '{path.name}'")
    if not path.parent.is_dir():  # before a long stream is rendered, not after
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    if questions is None:
        if n_questions < 0:
            raise ConfigError(f"n_questions must be >= 0, got {n_questions}")
        questions = sample_questions(world, n_questions, [world.seed, 3]) if n_questions else []
    # A keyframe every 2 s of stream time: seeking stays cheap in long streams.
    gop = max(1, round(2 * world.fps))
    write_video(
        path,
        n_frames=world.n_frames,
        width=world.size,
        height=world.size,
        fps=world.fps,
        options={"crf": str(crf), "g": str(gop)},
        draw=lambda i, _w, _h: world.render(i),
    )
    doc = {
        "version": SIDECAR_VERSION,
        "video": path.name,
        "world": world.to_dict(),
        "questions": [q.to_dict() for q in questions],
    }
    sidecar_path(path).write_text(json.dumps(doc) + "\n")
    return path


def load(path: str | Path) -> tuple[World, list[Question]]:
    """The world and questions stored beside video ``path`` (or given the ``.json`` itself)."""
    doc = json.loads(sidecar_path(path).read_text())
    if doc.get("version") != SIDECAR_VERSION:
        raise ConfigError(
            f"sidecar {sidecar_path(path)} has version {doc.get('version')}, expected {SIDECAR_VERSION}"
        )
    return World.from_dict(doc["world"]), [Question.from_dict(q) for q in doc["questions"]]
