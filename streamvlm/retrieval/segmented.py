"""``SegmentedIndex``: a ``LayeredIndex`` whose older rows live in sealed, memory-mapped files.

A stream's index grows by one summary per block (at Qwen2.5-VL-7B geometry 28 layers x
512 floats, 57 KB a block, 2.5 GB a day of video at 1 fps). Held in RAM, that alone would
make host memory grow with the stream. So the newest blocks are kept in an in-RAM
``LayeredIndex`` (the *tail*); when it holds ``seal_blocks`` blocks their vectors are
written to an ``IndexSegment`` (files in ``<directory>/segments/``, searched through a
read-only memory map) and the tail starts empty again. The RAM an index takes is then at
most ``seal_blocks`` blocks of vectors, whatever the stream's length.

Search is exact and ranks as one flat index would: the tail (FAISS flat) and every
segment (FAISS over the map, the same kernel) each give their top k with their scores,
bit for bit those of a single flat index, and the parts are merged on (score, id) the way
a flat index breaks ties (see ``_merge``). Removing a sealed block marks its row dead;
a segment whose rows are all dead is deleted at the next ``save``.

``save(directory)`` writes only what is in RAM: the tail (``tail/``, a ``LayeredIndex``)
and a manifest (``segmented.json``: the layout, each segment's name and dead rows); the
segment files were written once, when sealed. So a checkpoint costs O(seal_blocks), not
O(stream). The manifest is replaced atomically after the tail; a crash between the two
leaves a tail and manifest of different saves, whose blocks a resumed session reconciles
with the blocks on disk (``BlockMemory`` adds what is missing, removes what left).

Search cost grows with the stream as a flat index's does (every stored vector is read
once per question), plus one FAISS call per segment and group.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ._inputs import (
    DuplicateBlockIdError,
    IdFilter,
    IndexFileError,
    UnknownBlockIdError,
    as_ids,
    check_k,
    check_positive_int,
    contains,
    pad_to_k,
)
from .index import write_temp
from .layered import LayeredIndex
from .segment import IndexSegment

# Blocks the in-RAM tail holds before they are sealed. At Qwen2.5-VL-7B geometry (28 x 512
# float32 a block) 512 blocks are 29 MB of RAM; a smaller tail means more segments, and one
# FAISS call per segment and group per question (~50 us each at 512 rows x 512).
SEAL_BLOCKS = 512
SEGMENTS_DIR = "segments"
TAIL_DIR = "tail"
_MANIFEST = "segmented.json"
_LEGACY_MANIFEST = "layered.json"  # an index saved whole by LayeredIndex.save
_FORMAT = "streamvlm.SegmentedIndex"
_VERSION = 1


class SegmentedIndex:
    """Top-k block ids per layer, as ``LayeredIndex``, with older rows sealed to files.

    Args:
        num_layers, dim, groups, metric: as ``LayeredIndex``.
        directory: where sealed segments are written and the index is saved.
        seal_blocks: blocks the in-RAM tail holds before they are sealed.
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        directory: str | os.PathLike,
        groups: int | None = None,
        metric: str = "ip",
        seal_blocks: int = SEAL_BLOCKS,
    ) -> None:
        self.directory = Path(directory)
        self.seal_blocks = check_positive_int(seal_blocks, "seal_blocks")
        self._tail = _new_tail(num_layers, dim, groups, metric)
        self._segments: list[IndexSegment] = []

    # ----- layout (the tail's) -------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self._tail.num_layers

    @property
    def dim(self) -> int:
        return self._tail.dim

    @property
    def metric(self) -> str:
        return self._tail.metric

    @property
    def groups(self) -> tuple[range, ...]:
        return self._tail.groups

    # ----- what it holds -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tail) + sum(len(s) for s in self._segments)

    def ids(self) -> np.ndarray:
        """Stored block ids, ascending."""
        parts = [s.live_ids() for s in self._segments] + [self._tail.ids()]
        return np.sort(np.concatenate(parts))

    @property
    def nbytes(self) -> int:
        """Host RAM the index takes for its rows: the tail's vectors and the sealed rows'
        dead marks (the segments' vectors are in the page cache, not counted)."""
        return self._tail.nbytes + sum(8 * len(s.dead) for s in self._segments)

    @property
    def disk_bytes(self) -> int:
        """Bytes of the sealed segment files."""
        return sum(s.disk_bytes for s in self._segments)

    @property
    def sealed_blocks(self) -> int:
        """Blocks whose vectors are in sealed segments."""
        return sum(len(s) for s in self._segments)

    # ----- mutation --------------------------------------------------------------------

    def add(self, block_ids, vectors) -> None:
        """Add blocks as ``LayeredIndex.add``; seals the tail once it holds ``seal_blocks``."""
        ids = as_ids(block_ids)
        sealed = self._sealed_mask(ids)
        if sealed.any():
            raise DuplicateBlockIdError(f"block id {int(ids[sealed][0])} is already in the index")
        self._tail.add(ids, vectors)
        if len(self._tail) >= self.seal_blocks:
            self.seal()

    def seal(self) -> None:
        """Write the tail's rows to a new segment and empty the tail."""
        if not len(self._tail):
            return
        ids = self._tail.ids()
        vectors = self._tail.group_vectors(ids)
        segment = IndexSegment.write(self.directory / SEGMENTS_DIR, ids, self._tail.group_dims, vectors)
        self._segments.append(segment)
        self._tail = _new_tail(self.num_layers, self.dim, self._tail.group_size, self.metric)

    def remove(self, block_ids) -> None:
        """Remove blocks (each must be present; ``UnknownBlockIdError`` otherwise, nothing removed)."""
        ids = np.unique(as_ids(block_ids))
        in_tail = contains(self._tail.ids(), ids)
        holders = [(s, s.holds(ids)) for s in self._segments]
        found = in_tail.copy()
        for _, mask in holders:
            found |= mask
        if not found.all():
            raise UnknownBlockIdError(f"block id {int(ids[~found][0])} is not in the index")
        if in_tail.any():
            self._tail.remove(ids[in_tail])
        for segment, mask in holders:
            segment.kill(ids[mask])

    def _sealed_mask(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` sealed segments hold (none, at once, for ids newer than all of them)."""
        mask = np.zeros(len(ids), bool)
        if not len(ids) or ids.min() > max((s.last for s in self._segments), default=-1):
            return mask  # the usual add: a new block, newer than every sealed one
        for segment in self._segments:
            mask |= segment.holds(ids)
        return mask

    # ----- queries ---------------------------------------------------------------------

    def search(
        self, queries, k: int, allowed_ids=None, id_range=None, ordered: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """As ``LayeredIndex.search``: one ``(scores [k], ids [k])`` per layer, best first.

        ``ordered=False`` with ``k`` at least the blocks that pass the filter: every one of
        them, in no particular order (padding ids, < 0, may remain): what a caller summing
        every block's scores needs; it spares merging the segments' rankings."""
        hits = self._tail.search(queries, k, allowed_ids=allowed_ids, id_range=id_range)
        if not self._segments:
            return hits
        k = check_k(k)
        flt = IdFilter.make(allowed_ids, id_range)
        prepared = self._tail.group_queries(queries)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for g, group in enumerate(self.groups):
            parts = [hits[group.start]]
            parts += [s.search(g, prepared[g], k, flt) for s in self._segments if _may_pass(s, flt)]
            out.extend([_merge(parts, k) if ordered else _concat(parts)] * len(group))
        return out

    # ----- persistence -----------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tail and the manifest into ``directory`` (the index's own directory:
        its segments are already there); delete the files of segments with no rows alive."""
        if Path(directory).resolve() != self.directory.resolve():
            raise ConfigError(
                f"a SegmentedIndex saves into its own directory {self.directory}, not {directory}"
            )
        self._segments = [s for s in self._segments if len(s)]
        self._tail.save(self.directory / TAIL_DIR)
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "num_layers": self.num_layers,
            "dim": self.dim,
            "groups": self._tail.group_size,
            "metric": self.metric,
            "seal_blocks": self.seal_blocks,
            "segments": [{"name": s.name, "dead": s.dead.tolist()} for s in self._segments],
        }
        manifest_path = self.directory / _MANIFEST  # replaced whole: a crash leaves the old or the new
        os.replace(write_temp(manifest_path, json.dumps(manifest, indent=1).encode()), manifest_path)
        self._delete_unlisted()

    def _delete_unlisted(self) -> None:
        """Remove segment files no live segment owns (emptied ones, or sealed before a crash)."""
        listed = {path.name for s in self._segments for path in s.files}
        folder = self.directory / SEGMENTS_DIR
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name not in listed:
                    path.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, seal_blocks: int = SEAL_BLOCKS) -> SegmentedIndex:
        """Read an index written by ``save`` (or a ``LayeredIndex`` saved whole, as its tail);
        ``IndexFileError`` if it is missing or inconsistent."""
        directory = Path(directory)
        if not (directory / _MANIFEST).is_file() and (directory / _LEGACY_MANIFEST).is_file():
            tail, listed = LayeredIndex.load(directory), []
        else:
            tail = LayeredIndex.load(directory / TAIL_DIR)
            listed = _read_manifest(directory, tail)
        out = cls(tail.num_layers, tail.dim, directory, tail.group_size, tail.metric, seal_blocks)
        out._tail = tail
        dims = tail.group_dims
        out._segments = [
            IndexSegment(directory / SEGMENTS_DIR, entry["name"], dims, entry["dead"]) for entry in listed
        ]
        held = [out._tail.ids()] + [s.live_ids() for s in out._segments]
        every = np.concatenate(held)
        if len(np.unique(every)) != len(every):
            raise IndexFileError(f"{directory}: a block id is in two parts of the index")
        return out


def _new_tail(num_layers: int, dim: int, groups: int | None, metric: str) -> LayeredIndex:
    # exact flat search: the tail holds at most seal_blocks blocks
    return LayeredIndex(num_layers, dim, groups=groups, metric=metric, ivf_threshold=None)


def _may_pass(segment: IndexSegment, flt: IdFilter | None) -> bool:
    """Whether any id of ``segment`` can pass ``flt`` (skips segments outside a time range)."""
    if flt is None or not len(segment):
        return bool(len(segment))
    if flt.lo is not None and (segment.last < flt.lo or segment.first >= flt.hi):
        return False
    if flt.allowed is not None:
        lo = np.searchsorted(flt.allowed, segment.first, side="left")
        hi = np.searchsorted(flt.allowed, segment.last, side="right")
        return bool(hi > lo)
    return True


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Every real hit of several parts, as they come (padding dropped)."""
    scores = np.concatenate([np.asarray(s, np.float32).ravel() for s, _ in parts])
    ids = np.concatenate([np.asarray(i, np.int64).ravel() for _, i in parts])
    real = ids >= 0
    return scores[real], ids[real]


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several parts' results, ranked as one flat index holding them all.

    A flat FAISS index keeps, among equal scores, the rows added first (the smaller block
    ids: ids grow with time) and lists equal scores newest first; doing the same here
    makes a split index return exactly what one index would, ties included.
    """
    scores, ids = _concat(parts)
    if k < len(ids):  # some are left out: among equal scores at the cut, the smaller ids stay
        keep = np.lexsort((ids, -scores))[:k]
        scores, ids = scores[keep], ids[keep]
    best = np.lexsort((-ids, -scores))  # listed as faiss lists ties
    top_scores, top_ids = pad_to_k(scores[best][None], ids[best][None], k)
    return top_scores[0], top_ids[0]


def _read_manifest(directory: Path, tail: LayeredIndex) -> list[dict]:
    """The segments ``segmented.json`` lists, checked against the layout of ``tail``."""
    path = directory / _MANIFEST
    try:
        manifest = json.loads(path.read_text())
        assert manifest["format"] == _FORMAT and manifest["version"] == _VERSION
        layout = (manifest["num_layers"], manifest["dim"], manifest["groups"], manifest["metric"])
        listed = [{"name": str(e["name"]), "dead": list(e["dead"])} for e in manifest["segments"]]
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise IndexFileError(f"no valid segmented index manifest {path}: {e!r}") from None
    if layout != (tail.num_layers, tail.dim, tail.group_size, tail.metric):
        raise IndexFileError(f"{path} and {directory / TAIL_DIR} were saved with different layouts")
    return listed
