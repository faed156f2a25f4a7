"""The files of a session directory besides the disk tier's own, written atomically.

A session directory holds the disk tier (segments + block table), the retrieval index
(``index/``), ``session.json`` with what the blocks do not say (the model, the memory
options, the next block id, and the session's own record: system prompt and stream
counters) and, for a stateful ``disk_codec`` (``vidkv``), ``codec_state.safetensors``: its
per-layer state, without which the disk blocks cannot be decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import safetensors.torch

from ..config import RESUME_OVERRIDABLE  # noqa: F401  (re-exported: BlockMemory.open checks overrides)
from ..errors import StreamVLMError
from .disk import write_atomically

SESSION_FILE = "session.json"
INDEX_DIR = "index"
CODEC_STATE_FILE = "codec_state.safetensors"
FORMAT_VERSION = 1


class SessionResumeError(StreamVLMError):
    """A directory cannot be resumed as a session."""


def holds_session(directory: Path) -> bool:
    return (directory / SESSION_FILE).exists()


def read_record(directory: Path) -> dict:
    """``session.json`` of ``directory``; ``SessionResumeError`` when it is not a session."""
    path = directory / SESSION_FILE
    if not path.is_file():
        raise SessionResumeError(f"{directory} is not a streamvlm session directory (no {SESSION_FILE})")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SessionResumeError(f"cannot read {path}: {e}") from e
    if record.get("format") != FORMAT_VERSION:
        raise SessionResumeError(
            f"{path} has format {record.get('format')!r}; this streamvlm reads {FORMAT_VERSION}"
        )
    return record


def write_record(directory: Path, record: dict) -> None:
    """Replace ``session.json`` (the format version is added here)."""
    data = json.dumps({"format": FORMAT_VERSION, **record}, indent=1).encode()
    write_atomically(directory / SESSION_FILE, data)


def save_codec_state(directory: Path, codec) -> None:
    """Write ``codec``'s per-layer state to ``directory/codec_state.safetensors``, atomically."""
    tensors = {name: t.contiguous() for name, t in codec.shared_state().items()}
    write_atomically(
        directory / CODEC_STATE_FILE, safetensors.torch.save(tensors, metadata={"codec": codec.name})
    )


def load_codec_state(directory: Path, codec, blocks: int) -> None:
    """Restore the disk codec's state saved by ``save_codec_state``.

    A stateful codec with ``blocks`` on disk and no state file cannot decode them: that is
    an error here rather than at the first question.
    """
    path = directory / CODEC_STATE_FILE
    if not path.exists():
        if codec.stateful and blocks:
            raise SessionResumeError(
                f"{path} is missing: the {blocks} blocks on disk were encoded with {codec.name} "
                "state that was saved there and cannot be decoded without it"
            )
        return
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            saved_by = (f.metadata() or {}).get("codec")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, safetensors.SafetensorError) as e:
        raise SessionResumeError(f"cannot read {path}: {e}") from e
    if saved_by != codec.name:
        raise SessionResumeError(
            f"{path} holds state of codec {saved_by!r}, not of disk_codec {codec.name!r}"
        )
    codec.load_shared_state(tensors)
