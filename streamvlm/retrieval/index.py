"""``BlockIndex``: FAISS over one summary vector per block, for one layer (or layer group).

A block's summary is the mean of its de-rotated keys per KV head, concatenated; a
question gives one query vector per layer. The index returns the top-k block ids by
inner product (``"ip"``) or cosine (vectors and queries L2-normalised, then inner product).

Two structures, chosen by size:

- **flat** (``IndexIDMap2(IndexFlatIP)``), exact. Up to ``ivf_threshold`` vectors.
  Single-query search is memory-bound: measured on one core of this project's CPU
  machines at dim 512, 0.17 ms for 2k vectors, 1.3 ms for 10k, 7.6 ms for 50k.
- **IVF** (``IndexIVFFlat``, inner-product quantiser, ids stored in the inverted lists,
  a hashtable direct map for ``reconstruct``/``remove``), approximate. It scans
  ``nprobe`` of ``nlist`` lists. ``IndexIVFFlat`` keeps the raw vectors, so
  ``reconstruct`` is exact and retraining needs nothing else.

Why ``ivf_threshold = 50_000``: at one block per 1-2 s of video that is 14-28 h of
stream, where an exact search costs ~8 ms per layer (~0.2 s per question for 28 layers),
still small beside a question's prefill. Below it, exact results are worth more than the
speed-up (lossless mode depends on them). Above it, flat search grows linearly while IVF
(nlist = sqrt(n), nprobe = 16) stays at ~1 ms. Recall is the trade: on video-like
summaries (slow drift with scene cuts) nprobe = 16 of 224 lists gave recall@16 = 1.00 at
50k vectors; on isotropic Gaussian vectors, which have no clusters, it gave 0.17. Raise
``nprobe`` (``nprobe = nlist`` is exact) or ``ivf_threshold`` if recall matters more.
Training (k-means, <= 64 points per list, 10 iterations) runs inline in the ``add`` that
crosses the threshold: ~0.3-0.5 s per index at 50k x 512 on one core; it is redone each
time the index grows 4x (so the auto nlist doubles and the lists follow content drift).

Filters (``allowed_ids``, ``id_range``) use FAISS ID selectors in faiss 1.15:
``SearchParameters(sel=...)`` on ``IndexIDMap2`` (it translates the selector to its
internal ids) and ``SearchParametersIVF(sel=..., nprobe=...)`` on IVF (a plain
``SearchParameters`` is rejected there). ``IDSelectorRange`` and ``IDSelectorBatch`` both
work with both. Removal from the IVF's hashtable direct map accepts only
``IDSelectorArray``. ``IndexIDMap2`` around an IVF is not used: its ``remove_ids``
assumes the inner index renumbers like a flat one, and an IVF does not, so ids get
shifted after a removal (checked: a self-query returns the neighbour's id).

In IVF mode a filter passing a fraction f of the ids makes the search probe
``nprobe / f`` lists, so a narrow time range (f <= nprobe / nlist) is searched exactly.
Filters in between lose more recall than unfiltered search: with nprobe 1 of 55 lists
and queries drawn from the whole stream, ranges holding a third of the blocks gave
recall@10 of 0.5-0.6 (0.3 without the nprobe / f rule).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import faiss
import numpy as np
import torch

from ..errors import ConfigError
from ._inputs import (
    DuplicateBlockIdError,
    IdFilter,
    IndexFileError,
    IndexInputError,
    UnknownBlockIdError,
    as_ids,
    as_vectors,
    check_k,
    check_metric,
    check_positive_int,
    count_mismatch,
    new_ids_sorted,
    pad_to_k,
    padded,
    prepare,
    require_present,
)
from .device import faiss_gpu_usable

__all__ = [
    "BlockIndex",
    "DEFAULT_IVF_THRESHOLD",
    "DEFAULT_NPROBE",
    "DuplicateBlockIdError",
    "IndexFileError",
    "IndexInputError",
    "UnknownBlockIdError",
]

DEFAULT_IVF_THRESHOLD = 50_000
DEFAULT_NPROBE = 16
_RETRAIN_GROWTH = 4  # retrain the IVF once it holds 4x the vectors it was trained on
_TRAIN_POINTS_PER_LIST = 64  # k-means sample cap; faiss's own default of 256 costs 4x more
_KMEANS_ITERATIONS = 10  # a coarse quantiser needs no converged k-means
_MIN_POINTS_PER_LIST = 39  # below this faiss warns that k-means is undertrained
_FORMAT = "streamvlm.BlockIndex"
_VERSION = 1


class BlockIndex:
    """Top-k block ids by inner product or cosine over one summary vector per block.

    Args:
        dim: vector length (kv_heads * head_dim, or that times the layers of a group).
        metric: ``"ip"`` or ``"cosine"`` (vectors and queries L2-normalised; all-zero
            vectors stay zero and score 0).
        ivf_threshold: switch from exact flat search to IVF when the index holds this
            many vectors; ``None`` keeps it flat. It switches back below half of it.
        nlist: IVF lists; ``None`` = ``round(sqrt(n))`` (at most n / 39) at each training.
        nprobe: IVF lists scanned per query (exact when ``nprobe >= nlist``).
        device: ``"cuda[:i]"`` searches a GPU copy of the flat index with faiss when
            ``faiss_gpu_usable(device)``; otherwise, and for filtered or IVF searches,
            the CPU index is used.

    Ids are non-negative int64 block ids (in practice increasing over time). Not thread-safe.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        ivf_threshold: int | None = DEFAULT_IVF_THRESHOLD,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        device: str | torch.device | None = None,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_metric(metric)
        self.ivf_threshold = check_positive_int(ivf_threshold, "ivf_threshold", allow_none=True)
        self._nlist_option = check_positive_int(nlist, "nlist", allow_none=True)
        self.nprobe = nprobe
        self._ids = np.empty(0, np.int64)  # sorted; the source of truth for membership checks
        self._index = self._new_flat()
        self._trained_n = 0  # vectors the current IVF was trained on (0 while flat)
        self._gpu = _GpuFlatCopy(device) if device is not None and faiss_gpu_usable(device) else None

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"`` (approximate unless nprobe >= nlist)."""
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists, or None while flat."""
        return self._index.nlist if self.kind == "ivf" else None

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = check_positive_int(value, "nprobe")

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        """Stored block ids, ascending (a copy)."""
        return self._ids.copy()

    # ------------------------------------------------------------------ mutation

    def add(self, ids, vectors) -> None:
        """Add one vector per id (``[n, dim]``; a single ``[dim]`` vector with one id is fine).

        Raises ``DuplicateBlockIdError`` for an id given twice or already present, and
        ``IndexInputError`` for a wrong shape or non-finite values; nothing is added then.
        """
        ids = as_ids(ids)
        x = as_vectors(vectors, self.dim)
        if len(ids) != len(x):
            raise count_mismatch(len(ids), len(x))
        if not len(ids):
            return
        new_sorted = new_ids_sorted(self._ids, ids)
        self._index.add_with_ids(self._prepare(x), ids)
        self._ids = new_sorted
        self._changed()

    def remove(self, ids) -> None:
        """Remove these ids (e.g. blocks dropped by the disk budget). Each must be present
        (``UnknownBlockIdError`` otherwise, nothing removed); repeats are ignored."""
        ids = np.unique(as_ids(ids))
        require_present(self._ids, ids)
        if not len(ids):
            return
        # The IVF's hashtable direct map removes only by IDSelectorArray; the flat IDMap2
        # tests every stored id, so a hashed IDSelectorBatch is the right one there.
        sel = faiss.IDSelectorArray(ids) if self.kind == "ivf" else faiss.IDSelectorBatch(ids)
        removed = self._index.remove_ids(sel)
        assert removed == len(ids), f"faiss removed {removed} of {len(ids)} ids"
        self._ids = np.setdiff1d(self._ids, ids, assume_unique=True)
        self._changed()

    # ------------------------------------------------------------------ queries

    def search(self, queries, k: int, allowed_ids=None, id_range=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: ``(scores [nq, k] float32, ids [nq, k] int64)``, best first.

        ``allowed_ids`` restricts results to those ids, ``id_range=(lo, hi)`` to
        ``lo <= id < hi`` (both may be given). Where fewer than k ids qualify (or an IVF
        probe finds fewer) the rest is id -1, score -inf. When k covers every qualifying
        id, the IVF scans all lists, so "retrieve everything" is exact in IVF mode too.
        """
        q = self._prepare(as_vectors(queries, self.dim, "queries"))
        k = check_k(k)
        flt = IdFilter.make(allowed_ids, id_range)
        n_cand = len(self) if flt is None else flt.candidates(self._ids)
        if n_cand == 0:
            return padded(len(q), k)
        k_search = min(k, n_cand)  # never ask faiss for more than can exist (k may be huge)
        if self._gpu is not None and flt is None and self.kind == "flat":
            scores, ids = self._gpu.search(self._index, q, k_search)
        else:
            scores, ids = self._index.search(q, k_search, params=self._params(flt, k_search, n_cand))
        return pad_to_k(scores, ids, k)

    def reconstruct(self, ids) -> np.ndarray:
        """Stored vectors for these ids as float32 ``[n, dim]`` (unit-norm for cosine)."""
        ids = as_ids(ids)
        require_present(self._ids, ids)
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        return self._index.reconstruct_batch(ids)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` and its settings to ``path + ".json"``.

        Each file is written to a temporary name and moved into place (``os.replace``),
        so a crash leaves the old or the new file, never a partial one; the sidecar
        records the vector count so that ``load`` detects a pair from different saves.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "dim": self.dim,
            "metric": self.metric,
            "ivf_threshold": self.ivf_threshold,
            "nlist": self._nlist_option,
            "nprobe": self.nprobe,
            "kind": self.kind,
            "count": len(self),
            "trained_n": self._trained_n,
        }
        temps = []
        try:
            temps.append(write_temp(path, faiss.serialize_index(self._index).tobytes()))
            temps.append(write_temp(_sidecar(path), json.dumps(meta, indent=1).encode()))
            os.replace(temps[0], path)
            os.replace(temps[1], _sidecar(path))
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> BlockIndex:
        """Read an index written by ``save``; raises ``IndexFileError`` if missing or inconsistent."""
        path = Path(path)
        meta = _read_sidecar(path)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexFileError(f"cannot read faiss index {path}: {str(e).splitlines()[0]}") from None
        try:
            out = cls(
                meta["dim"],
                metric=meta["metric"],
                ivf_threshold=meta["ivf_threshold"],
                nlist=meta["nlist"],
                nprobe=meta["nprobe"],
                device=device,
            )
            trained_n = int(meta["trained_n"])
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise IndexFileError(f"{_sidecar(path)} has a missing or bad field: {e}") from None
        expected = faiss.IndexIVFFlat if meta["kind"] == "ivf" else faiss.IndexIDMap2
        if not isinstance(index, expected) or index.d != out.dim or index.ntotal != meta["count"]:
            raise IndexFileError(
                f"{path} does not match its sidecar {_sidecar(path)} (saved by another run?)"
            )
        out._index = index
        out._ids = np.sort(_stored_ids(index))
        out._trained_n = trained_n
        return out

    # ------------------------------------------------------------------ internals

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return prepare(x, self.metric)

    def _params(self, flt: IdFilter | None, k: int, n_cand: int) -> faiss.SearchParameters | None:
        sel = _selector(flt)
        if self.kind == "flat":
            return None if sel is None else faiss.SearchParameters(sel=sel)
        params = faiss.SearchParametersIVF(nprobe=self._ivf_nprobe(k, n_cand))
        if sel is not None:
            params.sel = sel  # the Python wrapper keeps sel alive with params
        return params

    def _ivf_nprobe(self, k: int, n_cand: int) -> int:
        nlist = self._index.nlist
        if k >= n_cand:
            return nlist  # every qualifying id must come back
        # A filter that passes a fraction f of the ids leaves ~f of each probed list usable;
        # probing nprobe / f lists keeps the number of usable candidates scanned the same.
        # Distances are computed only for ids that pass the selector, so a filter passing at
        # most nprobe / nlist of the ids is searched exactly (all lists) at no extra cost.
        return min(nlist, math.ceil(self.nprobe * len(self) / n_cand))

    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _new_ivf(self, train: np.ndarray) -> faiss.IndexIVFFlat:
        n = len(train)
        nlist = self._nlist_option or max(1, min(round(math.sqrt(n)), n // _MIN_POINTS_PER_LIST))
        nlist = min(nlist, n)
        ivf = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = _KMEANS_ITERATIONS
        ivf.cp.max_points_per_centroid = _TRAIN_POINTS_PER_LIST
        ivf.cp.min_points_per_centroid = 1  # an explicit small-n nlist is the caller's choice; no warning
        ivf.cp.spherical = self.metric == "cosine"  # unit-norm centroids for unit-norm data
        ivf.train(train)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct/remove by block id
        return ivf

    def _changed(self) -> None:
        if self._gpu is not None:
            self._gpu.invalidate()
        target = self._target_kind()
        if target != self.kind or (target == "ivf" and len(self) >= _RETRAIN_GROWTH * self._trained_n):
            self._rebuild(target)

    def _target_kind(self) -> str:
        if self.ivf_threshold is None:
            return "flat"
        if self.kind == "flat":
            return "ivf" if len(self) >= self.ivf_threshold else "flat"
        # Hysteresis: removing one block at the threshold must not flip back and forth.
        return "ivf" if len(self) >= self.ivf_threshold // 2 else "flat"

    def _rebuild(self, kind: str) -> None:
        """Move every (id, vector) into a new flat or freshly trained IVF index; ids unchanged."""
        ids = self._ids
        vectors = self._index.reconstruct_batch(ids)  # as stored (already normalised for cosine)
        index = self._new_ivf(vectors) if kind == "ivf" else self._new_flat()
        index.add_with_ids(vectors, ids)
        self._index = index
        self._trained_n = len(ids) if kind == "ivf" else 0


class _GpuFlatCopy:
    """A faiss GPU copy of the flat index's vectors, made on the first search after a change.

    Only the inner ``IndexFlatIP`` goes to the GPU; its row numbers are mapped back to
    block ids through the IDMap2's ``id_map`` (flat removal compacts both alike). faiss GPU
    indexes do not take ID selectors, so filtered searches stay on the CPU index.
    """

    def __init__(self, device: str | torch.device) -> None:
        dev = torch.device(device)
        self._device = dev.index if dev.index is not None else torch.cuda.current_device()
        self._resources = faiss.StandardGpuResources()
        self._copy = None
        self._id_map = None

    def invalidate(self) -> None:
        self._copy = None

    def search(self, idmap: faiss.IndexIDMap2, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._copy is None:
            self._copy = faiss.index_cpu_to_gpu(
                self._resources, self._device, faiss.downcast_index(idmap.index)
            )
            self._id_map = faiss.vector_to_array(idmap.id_map)
        scores, rows = self._copy.search(q, k)
        return scores, np.where(rows >= 0, self._id_map[np.maximum(rows, 0)], -1)


def _selector(flt: IdFilter | None) -> faiss.IDSelector | None:
    if flt is None:
        return None
    if flt.allowed is not None:
        return faiss.IDSelectorBatch(flt.allowed)  # hashed: O(1) per tested id
    return faiss.IDSelectorRange(flt.lo, flt.hi)


def _stored_ids(index: faiss.Index) -> np.ndarray:
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(index.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` next to ``path`` under a unique temporary name, flushed to disk."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _read_sidecar(path: Path) -> dict:
    sidecar = _sidecar(path)
    if not path.is_file() or not sidecar.is_file():
        raise IndexFileError(f"no saved block index at {path} (need {path.name} and {sidecar.name})")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise IndexFileError(f"cannot read {sidecar}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise IndexFileError(f"{sidecar} is not a {_FORMAT} v{_VERSION} sidecar")
    return meta
