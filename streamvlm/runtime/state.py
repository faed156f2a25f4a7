"""The stream's counters: one record, saved and restored whole."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from ..memory.block import BlockMeta


@dataclass
class StreamState:
    """Where a stream stands. Saved beside its blocks at every checkpoint (``asdict``)
    and restored whole on resume; nothing else of a session's progress is persisted."""

    t0: float | None = None  # stream time of the first frame: time positions count from it
    last_t: float | None = None  # stream time of the latest frame accepted
    # one past the largest position used so far: where the next chunk or a question starts
    # (a different counter from the number of cached slots: pruning and retrieval break that)
    next_position: int = 0
    frames_seen: int = 0  # frames accepted, encoded or still pending in a partial chunk
    frames_encoded: int = 0  # frames in encoded blocks (padding repeats not counted)
    chunks_encoded: int = 0
    visual_tokens_seen: int = 0  # merged visual tokens of every encoded chunk
    visual_tokens_kept: int = 0  # of those, the ones pruning kept (all of them without pruning)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> StreamState:
        """The state in a saved record; counters it lacks (older sessions) start at 0."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def recover(self, blocks: Iterable[BlockMeta]) -> None:
        """Move the counters on by blocks that reached the disk after the state was saved.

        A crash can leave blocks written after the last checkpoint; the disk tier recovers
        them, and their metadata says how far the stream had got.
        """
        blocks = list(blocks)
        if not blocks:
            return
        self.frames_seen += sum(m.frames for m in blocks)
        self.frames_encoded += sum(m.frames for m in blocks)
        self.chunks_encoded += len(blocks)
        self.visual_tokens_seen += sum(m.kept.numel() for m in blocks)
        self.visual_tokens_kept += sum(m.tokens for m in blocks)
        self.next_position = max(self.next_position, max(m.max_position for m in blocks) + 1)
        newest = blocks[-1].t_end
        self.last_t = newest if self.last_t is None else max(self.last_t, newest)
        if self.t0 is None:
            self.t0 = blocks[0].t_start
