"""``IndexSegment``: block summaries sealed into files and searched through a memory map.

A segment is immutable rows (block id, one vector per layer group) in two ``.npy`` files:
``<name>.ids.npy`` (int64, ascending) and ``<name>.vectors.npy`` (float32, one flat array:
group 0's ``[n, dim0]`` rows, then group 1's, ...), so each group's rows are one
contiguous slice of a read-only memory map. FAISS searches that slice in place
(``faiss.knn_inner_product``): the vectors are read through the page cache, which the
kernel may drop, and never copied into the process's anonymous memory.

Scores are bit for bit those of a flat ``BlockIndex`` holding the same vectors: FAISS
computes each row's inner product with the same kernel, with or without an ID selector.
Removal marks rows dead (``kill``); the files never change.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from ._inputs import IdFilter, IndexFileError, contains


class IndexSegment:
    """Sealed rows of a layered index, searched in place; see the module docstring.

    Open one with ``IndexSegment.write`` (new rows) or ``IndexSegment.open`` (saved ones).
    """

    def __init__(self, directory: Path, name: str, group_dims: Sequence[int], dead=()):
        self.directory = Path(directory)
        self.name = name
        self.group_dims = list(group_dims)
        try:
            self._ids = np.load(self._path("ids"), mmap_mode="r")
            self._vectors = np.load(self._path("vectors"), mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexFileError(f"cannot read index segment {self._path('*')}: {e}") from None
        n = len(self._ids)
        if self._ids.dtype != np.int64 or self._vectors.dtype != np.float32:
            raise IndexFileError(f"index segment {self._path('*')} has the wrong dtypes")
        if self._vectors.shape != (n * sum(self.group_dims),):
            raise IndexFileError(
                f"index segment {self._path('vectors')} does not hold {n} rows of {sum(self.group_dims)} floats"
            )
        self._dead = np.empty(0, np.int64)  # sorted ids of rows removed since sealing
        self.kill(np.asarray(dead, np.int64))

    # ----- making and naming -------------------------------------------------------

    @classmethod
    def write(
        cls, directory: Path, ids: np.ndarray, group_dims: Sequence[int], group_vectors: Iterable[np.ndarray]
    ) -> IndexSegment:
        """Seal ``ids`` (ascending) with each group's ``[n, dim]`` vectors (given one group
        at a time, so a seal never holds two copies of them) into new files in
        ``directory``, flushed to disk, and open them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{int(ids[0]) if len(ids) else 0:012d}-{uuid.uuid4().hex[:8]}"
        _save_durably(directory / f"{name}.ids.npy", np.asarray(ids, np.int64))
        path = directory / f"{name}.vectors.npy"
        tmp = path.with_name(f".{path.name}.tmp")
        flat = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(ids) * sum(group_dims),)
        )
        start = 0
        for vectors in group_vectors:
            flat[start : start + vectors.size] = np.asarray(vectors, np.float32).ravel()
            start += vectors.size
        flat.flush()
        del flat
        _fsync(tmp)
        os.replace(tmp, path)
        return cls(directory, name, group_dims)

    def _path(self, kind: str) -> Path:
        return self.directory / f"{self.name}.{kind}.npy"

    @property
    def files(self) -> list[Path]:
        """The segment's two files."""
        return [self._path("ids"), self._path("vectors")]

    @property
    def disk_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    # ----- membership ----------------------------------------------------------------

    @property
    def first(self) -> int:
        return int(self._ids[0]) if len(self._ids) else -1

    @property
    def last(self) -> int:
        return int(self._ids[-1]) if len(self._ids) else -1

    @property
    def dead(self) -> np.ndarray:
        """Ids of the rows removed since sealing, ascending (a copy)."""
        return self._dead.copy()

    def __len__(self) -> int:
        """Rows alive (sealed and not removed)."""
        return len(self._ids) - len(self._dead)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are alive rows of this segment."""
        ids = np.asarray(ids, np.int64)
        if not len(self._ids):
            return np.zeros(len(ids), bool)
        inside = (ids >= self.first) & (ids <= self.last)
        found = np.zeros(len(ids), bool)
        found[inside] = contains(self._ids, ids[inside]) & ~contains(self._dead, ids[inside])
        return found

    def live_ids(self) -> np.ndarray:
        """Ids of the alive rows, ascending."""
        ids = np.asarray(self._ids)
        return ids[~contains(self._dead, ids)] if len(self._dead) else ids.copy()

    def kill(self, ids: np.ndarray) -> None:
        """Mark rows removed (ids this segment holds alive; the caller checks)."""
        if len(ids):
            self._dead = np.union1d(self._dead, ids)

    # ----- search ----------------------------------------------------------------------

    def search(
        self, group: int, query: np.ndarray, k: int, flt: IdFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best alive rows for one prepared query ``[1, group dim]`` of ``group``
        that pass ``flt``: ``(scores, ids)``, 1-D, best first (fewer when fewer qualify)."""
        lo, hi = 0, len(self._ids)
        if flt is not None and flt.lo is not None:  # ids ascend: a range is a slice of rows
            lo, hi = (int(i) for i in np.searchsorted(self._ids, [flt.lo, flt.hi]))
        ids = np.asarray(self._ids[lo:hi])
        mask = None
        if flt is not None and flt.allowed is not None:
            mask = contains(flt.allowed, ids)
        if len(self._dead):
            alive = ~contains(self._dead, ids)
            mask = alive if mask is None else mask & alive
        n = len(ids) if mask is None else int(mask.sum())
        if n == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        k = min(k, n)
        d = self.group_dims[group]
        start = len(self._ids) * sum(self.group_dims[:group]) + lo * d
        rows = self._vectors[start : start + len(ids) * d]  # a view of the map: nothing copied
        selector = bitmap = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")  # kept alive until the search returns
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores = np.empty((1, k), np.float32)
        found = np.empty((1, k), np.int64)
        query = np.ascontiguousarray(query, np.float32)
        faiss.knn_inner_product(
            faiss.swig_ptr(query),
            faiss.swig_ptr(rows),
            d,
            1,
            len(ids),
            k,
            faiss.swig_ptr(scores),
            faiss.swig_ptr(found),
            selector,
        )
        del bitmap
        hit = found[0] >= 0
        return scores[0][hit], ids[found[0][hit]]


def _save_durably(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` through a temporary name, fsynced: a crash leaves no partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a name
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
