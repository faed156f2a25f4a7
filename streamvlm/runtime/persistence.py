"""Building a session's store and index, checkpointing them to its directory, resuming.

A session directory holds the disk tier (segments + block table), the retrieval index
(``index/``), ``session.json`` with what the blocks do not say (the model, the system
prompt, the memory options, the stream clock and the counters) and, for a stateful
``disk_codec`` (``vidkv``), ``codec_state.safetensors``: its per-layer state, without which
the disk blocks cannot be decoded. Everything is written atomically; blocks written after
the last checkpoint are recovered from the segments by the disk tier, and the counters are
then rebuilt from them. The codec state is written whenever it changes, before the first
block that needs it reaches the disk, so every recovered block can be decoded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from pathlib import Path

import safetensors
import safetensors.torch

from ..config import MemoryConfig
from ..errors import StreamVLMError
from ..memory.codec import Codec, get_codec
from ..memory.disk import DiskTier
from ..memory.policy import get_policy
from ..memory.tiered import TieredStore
from ..retrieval.index import LayeredIndex

SESSION_FILE = "session.json"
INDEX_DIR = "index"
CODEC_STATE_FILE = "codec_state.safetensors"
FORMAT_VERSION = 1
# Options a resumed session may change: they do not alter what is stored.
RESUME_OVERRIDABLE = {
    "window",
    "answer_blocks",
    "max_question_chars",
    "device_bytes",
    "host_bytes",
    "top_k",
    "answer_window",
    "query_context",
    "position_mode",
    "selection",
    "neighbours",
    "eviction",
    "disk_flush_blocks",
}


class SessionResumeError(StreamVLMError):
    """A directory cannot be resumed as a session."""


def build_store(memory: MemoryConfig, backend, resume: bool = False) -> TieredStore:
    disk = None
    if memory.disk_dir is not None:
        if not resume and (Path(memory.disk_dir) / SESSION_FILE).exists():
            raise SessionResumeError(
                f"{memory.disk_dir} already holds a session; resume it with Session.resume(dir, engine) "
                "or pick an empty directory"
            )
        # the session decides when to make the disk durable (checkpoint), not the tier
        disk = DiskTier(memory.disk_dir, max_bytes=memory.disk_bytes, flush_every=None, flush_seconds=None)
    save_state = partial(save_codec_state, Path(memory.disk_dir)) if disk is not None else None
    store = TieredStore(
        device_bytes=memory.device_bytes,
        host_bytes=memory.host_bytes,
        device=backend.device,
        dtype=backend.dtype,
        host_codec=get_codec(memory.host_codec),
        disk=disk,
        disk_codec=get_codec(memory.disk_codec),
        policy=get_policy(memory.eviction),
        on_disk_codec_state=save_state,
    )
    if resume:
        try:
            load_codec_state(Path(memory.disk_dir), store.disk_codec, blocks=len(disk))
            store.adopt_disk_blocks()
        except BaseException:
            disk.close()  # release the directory's lock: the caller may fix it and resume again
            raise
    return store


def save_codec_state(directory: Path, codec: Codec) -> None:
    """Write ``codec``'s per-layer state to ``directory/codec_state.safetensors``, atomically."""
    tensors = {name: t.contiguous() for name, t in codec.shared_state().items()}
    data = safetensors.torch.save(tensors, metadata={"codec": codec.name})
    _write_bytes_atomically(directory / CODEC_STATE_FILE, data)


def load_codec_state(directory: Path, codec: Codec, blocks: int) -> None:
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


def build_index(memory: MemoryConfig, backend) -> LayeredIndex:
    return LayeredIndex(
        backend.num_layers,
        backend.num_kv_heads * backend.head_dim,
        groups=memory.index_groups,
        metric=memory.metric,
    )


# A full checkpoint rewrites the block table and the index: O(blocks held). It runs when
# the blocks since the last one reach this fraction of all blocks (at least FULL_MIN), so
# its cost per block stays constant however long the stream, and a resume scans at most
# that fraction of the blocks past the table.
FULL_FRACTION = 0.1
FULL_MIN = 64


def checkpoint(session, full: bool | None = None) -> None:
    """Make the session durable: blocks (fsync), counters, and when due the table and index.

    ``session.json`` is written last and atomically. ``full=None`` decides by the schedule
    above; ``True`` forces the table and index (at close).
    """
    directory = Path(session.memory.disk_dir)
    held = len(session.store)
    since = held - session._blocks_at_full
    if full is None:
        full = since >= max(FULL_MIN, FULL_FRACTION * held)
    session.store.persist_disk_codec_state()  # a no-op unless it changed (put writes it first)
    if full:
        session.store.disk.flush()
        session.index.save(directory / INDEX_DIR)
        session._blocks_at_full = held
    else:
        session.store.disk.sync()
    state = {
        "format": FORMAT_VERSION,
        "model": session.backend.name,
        "system_prompt": session.system_prompt,
        "memory": dataclasses.asdict(session.memory),
        "t0": session._t0,
        "last_t": session._last_t,
        "next_position": session.next_position,
        "next_block_id": session._next_block_id,
        "frames_seen": session.frames_seen,
        "frames_encoded": session.frames_encoded,
        "chunks_encoded": session.chunks_encoded,
        "visual_tokens_seen": session.visual_tokens_seen,
        "visual_tokens_kept": session.visual_tokens_kept,
    }
    _write_json_atomically(directory / SESSION_FILE, state)


def resume(cls, directory: Path, engine, overrides: dict):
    state = _read_state(directory)
    if state["model"] != engine.model_name:
        raise SessionResumeError(
            f"{directory} was written by model {state['model']!r}, not {engine.model_name!r}; "
            f"resume it with StreamVLM.from_pretrained({state['model']!r})"
        )
    fixed = set(overrides) - RESUME_OVERRIDABLE
    if fixed:
        raise SessionResumeError(
            f"cannot change {', '.join(sorted(fixed))} when resuming; they define what is stored"
        )
    memory = MemoryConfig(**{**state["memory"], **overrides, "disk_dir": str(directory)})
    session = cls(engine.backend, memory, state["system_prompt"], engine.device_lock, _resume=True)
    _restore_counters(session, state)
    _restore_index(session, directory)
    return session


def _restore_counters(session, state: dict) -> None:
    """Counters as of the last checkpoint, moved on by the blocks recovered after it."""
    for name in ("next_position", "frames_seen", "frames_encoded", "chunks_encoded"):
        setattr(session, name, state[name])
    for name in ("visual_tokens_seen", "visual_tokens_kept"):  # absent before pruning existed
        setattr(session, name, state.get(name, 0))
    session._t0, session._last_t, session._next_block_id = (
        state["t0"],
        state["last_t"],
        state["next_block_id"],
    )
    recovered = [m for m in session.store.metas() if m.id >= state["next_block_id"]]
    if not recovered:
        return
    session.frames_seen += sum(m.frames for m in recovered)
    session.frames_encoded += sum(m.frames for m in recovered)
    session.chunks_encoded += len(recovered)
    session.visual_tokens_seen += sum(m.kept.numel() for m in recovered)
    session.visual_tokens_kept += sum(m.tokens for m in recovered)
    session._next_block_id = recovered[-1].id + 1
    session.next_position = max(session.next_position, max(m.max_position for m in recovered) + 1)
    newest = recovered[-1].t_end
    session._last_t = newest if session._last_t is None else max(session._last_t, newest)
    if session._t0 is None:
        session._t0 = recovered[0].t_start


def _restore_index(session, directory: Path) -> None:
    """Load the saved index and bring it up to date from the blocks' stored summaries.

    The index is saved at full checkpoints only: blocks written since are added from their
    summaries, blocks dropped since are removed. A missing or damaged index is rebuilt.
    """
    try:
        session.index = LayeredIndex.load(directory / INDEX_DIR)
    except (OSError, ValueError, StreamVLMError, RuntimeError):
        pass  # keep the empty index build_index made
    metas = {m.id: m for m in session.store.metas()}
    indexed = set(session.index.ids())
    stale = sorted(indexed - metas.keys())
    if stale:
        session.index.remove(stale)
    for block_id in sorted(metas.keys() - indexed):
        session.index.add(block_id, metas[block_id].summary)
    session._blocks_at_full = len(metas)


def _read_state(directory: Path) -> dict:
    path = directory / SESSION_FILE
    if not path.is_file():
        raise SessionResumeError(f"{directory} is not a streamvlm session directory (no {SESSION_FILE})")
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SessionResumeError(f"cannot read {path}: {e}") from e
    if state.get("format") != FORMAT_VERSION:
        raise SessionResumeError(
            f"{path} has format {state.get('format')!r}; this streamvlm reads {FORMAT_VERSION}"
        )
    return state


def _write_json_atomically(path: Path, data: dict) -> None:
    _write_bytes_atomically(path, json.dumps(data, indent=1).encode())


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path``: a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
