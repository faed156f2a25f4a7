"""``LayeredIndex``: one block index per layer, or per group of consecutive layers.

Every block has one summary per layer and a question one query per layer; each layer (or
group) ranks the blocks on its own and the caller gets one row of results per layer.

Groups (``groups=g``) concatenate the summaries (and queries) of g consecutive layers
into one vector of ``g * dim``. Why concatenate and not average: each layer projects keys
with its own weights, so coordinates of different layers are unrelated and an average
mixes them (cross-layer products ``q_l . k_m`` become noise in the score). With
concatenation a group's score is exactly the **sum of its layers' inner products**
(``"ip"``) or, since each layer's part is L2-normalised before concatenating, the **mean
of its layers' cosines** (``"cosine"``; a layer whose vector is all zero shifts this
slightly). Memory and search cost are the same as per layer; the gain is g times fewer
searches and indexes, and one ranking shared by the group's layers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ._inputs import (
    IndexFileError,
    IndexInputError,
    as_ids,
    as_vectors,
    check_k,
    check_metric,
    check_positive_int,
    count_mismatch,
    l2_normalise,
    new_ids_sorted,
    prepare,
    require_present,
    to_numpy,
)
from .index import BlockIndex

_FORMAT = "streamvlm.LayeredIndex"
_VERSION = 1
_MANIFEST = "layered.json"


class LayeredIndex:
    """A ``BlockIndex`` (or any index from ``index_factory``) per layer or layer group.

    Args:
        num_layers: layers of the language model.
        dim: per-layer summary length (kv_heads * head_dim).
        groups: ``None`` for one index per layer, or g for groups of g consecutive layers
            (the last group may be smaller).
        metric: ``"ip"`` or ``"cosine"``.
        index_factory: ``factory(dim, metric) -> index`` for each group, e.g. a
            ``TorchFlatIndex`` on the device; default ``BlockIndex(dim, metric, **index_options)``.
        index_options: passed to ``BlockIndex`` (``ivf_threshold``, ``nlist``, ``nprobe``, ``device``).
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        groups: int | None = None,
        metric: str = "ip",
        index_factory: Callable[[int, str], object] | None = None,
        **index_options,
    ) -> None:
        if index_factory is not None and index_options:
            raise ConfigError("give either index_factory or BlockIndex options, not both")
        self._set_layout(num_layers, dim, groups, metric)
        if index_factory is None:

            def index_factory(d: int, m: str) -> BlockIndex:
                return BlockIndex(d, metric=m, **index_options)

        self._indexes = [index_factory(len(g) * self.dim, self.metric) for g in self.groups]

    def _set_layout(self, num_layers: int, dim: int, groups: int | None, metric: str) -> None:
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_metric(metric)
        self.group_size = check_positive_int(groups, "groups", allow_none=True)
        size = self.group_size or 1
        self.groups: tuple[range, ...] = tuple(
            range(lo, min(lo + size, self.num_layers)) for lo in range(0, self.num_layers, size)
        )

    def __len__(self) -> int:
        return len(self._indexes[0])

    @property
    def nbytes(self) -> int:
        """Host RAM the stored vectors take: float32, every layer of every block."""
        return 4 * len(self) * self.num_layers * self.dim

    @property
    def disk_bytes(self) -> int:
        """Bytes of vectors kept in files instead of RAM: none here (``SegmentedIndex`` seals them)."""
        return 0

    @property
    def group_dims(self) -> list[int]:
        """Vector length of each group's index."""
        return [len(group) * self.dim for group in self.groups]

    def ids(self) -> np.ndarray:
        """Stored block ids, ascending."""
        return self._indexes[0].ids()

    def add(self, block_ids, vectors) -> None:
        """Add blocks: one id with ``[num_layers, dim]``, or n ids with ``[n, num_layers, dim]``.

        All checks run before any group index changes, so a bad call adds nothing.
        """
        ids = as_ids(block_ids)
        x = self._layer_vectors(vectors, "vectors")
        if len(ids) != len(x):
            raise count_mismatch(len(ids), len(x))
        new_ids_sorted(self.ids(), ids)  # raises on a duplicate before anything is added
        for group, index in zip(self.groups, self._indexes, strict=True):
            index.add(ids, self._group_rows(x, group))

    def remove(self, block_ids) -> None:
        """Remove blocks from every layer's index (each id must be present)."""
        ids = np.unique(as_ids(block_ids))
        require_present(self.ids(), ids)
        for index in self._indexes:
            index.remove(ids)

    def search(
        self, queries, k: int, allowed_ids=None, id_range=None, ordered: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k per layer for one question: ``queries [num_layers, dim]`` -> one
        ``(scores [k] float32, ids [k] int64)`` per layer, best first. Layers of a group get
        the group's ranking (the same arrays). Filters and padding as in ``BlockIndex.search``.
        (``ordered`` is ``SegmentedIndex``'s; a single index ranks its hits at no extra cost.)

        Summing a block's scores over the returned layers counts a group's score once per
        layer in it: with equal group sizes that scales every block alike.
        """
        q = self._one_question(queries)
        k = check_k(k)
        hits: list[tuple[np.ndarray, np.ndarray]] = []
        for group, index in zip(self.groups, self._indexes, strict=True):
            scores, ids = index.search(
                self._group_rows(q, group), k, allowed_ids=allowed_ids, id_range=id_range
            )
            hits.extend([(scores[0], ids[0])] * len(group))
        return hits

    def group_queries(self, queries) -> list[np.ndarray]:
        """One question's ``queries [num_layers, dim]`` as each group's index compares them:
        ``[1, group dim]`` float32 per group (L2-normalised for cosine)."""
        q = self._one_question(queries)
        return [prepare(self._group_rows(q, group), self.metric) for group in self.groups]

    def group_vectors(self, block_ids) -> Iterator[np.ndarray]:
        """The stored vectors of ``block_ids`` in each group's index, ``[n, group dim]`` float32,
        as searched (L2-normalised for cosine), one group at a time; ``UnknownBlockIdError``
        for an id not held."""
        return (index.reconstruct(block_ids) for index in self._indexes)

    def save(self, directory: str | os.PathLike) -> None:
        """Write every group's index and a manifest into ``directory``.

        Written into a fresh sibling directory first and swapped in by rename, so a
        crash never leaves a mix of two saves (at worst, the old copy under a
        ``.<name>.old-*`` name). Needs ``BlockIndex`` groups.
        """
        if not all(isinstance(index, BlockIndex) for index in self._indexes):
            raise ConfigError("LayeredIndex.save needs BlockIndex groups (a torch index is not saved)")
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            files = [f"group{g:03d}.faiss" for g in range(len(self.groups))]
            for name, index in zip(files, self._indexes, strict=True):
                index.save(tmp / name)
            manifest = {
                "format": _FORMAT,
                "version": _VERSION,
                "num_layers": self.num_layers,
                "dim": self.dim,
                "groups": self.group_size,
                "metric": self.metric,
                "files": files,
            }
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            _swap_in(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> LayeredIndex:
        """Read a ``LayeredIndex`` written by ``save``; ``IndexFileError`` if missing or inconsistent."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / _MANIFEST).read_text())
            assert manifest["format"] == _FORMAT and manifest["version"] == _VERSION
            out = cls.__new__(cls)
            out._set_layout(manifest["num_layers"], manifest["dim"], manifest["groups"], manifest["metric"])
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError, AssertionError, ConfigError) as e:
            raise IndexFileError(f"no valid layered index manifest in {directory}: {e!r}") from None
        if len(files) != len(out.groups):
            raise IndexFileError(
                f"{directory / _MANIFEST} lists {len(files)} files for {len(out.groups)} groups"
            )
        out._indexes = [BlockIndex.load(directory / name, device=device) for name in files]
        out._check_loaded(directory)
        return out

    def _check_loaded(self, directory: Path) -> None:
        ids = self._indexes[0].ids()
        for group, index in zip(self.groups, self._indexes, strict=True):
            if index.dim != len(group) * self.dim or index.metric != self.metric:
                raise IndexFileError(f"{directory}: a group index does not match the manifest")
            if not np.array_equal(index.ids(), ids):
                raise IndexFileError(f"{directory}: group indexes hold different block ids")

    def _one_question(self, queries) -> np.ndarray:
        q = self._layer_vectors(queries, "queries")
        if len(q) != 1:
            raise IndexInputError(f"queries must have shape [{self.num_layers}, {self.dim}] (one question)")
        return q

    def _layer_vectors(self, x, what: str) -> np.ndarray:
        """``x`` as float32 ``[n, num_layers, dim]`` (a single ``[num_layers, dim]`` gives n = 1)."""
        arr = to_numpy(x)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (self.num_layers, self.dim):
            raise IndexInputError(
                f"{what} must have shape [{self.num_layers}, {self.dim}] or [n, {self.num_layers}, {self.dim}],"
                f" got {list(arr.shape)}"
            )
        return as_vectors(arr.reshape(-1, self.dim), self.dim, what).reshape(arr.shape)

    def _group_rows(self, x: np.ndarray, group: range) -> np.ndarray:
        part = x[:, group.start : group.stop]
        if self.metric == "cosine" and len(group) > 1:
            # Unit-norm parts: the group's cosine is then the mean of the layers' cosines.
            part = l2_normalise(part.reshape(-1, self.dim)).reshape(part.shape)
        return np.ascontiguousarray(part.reshape(len(x), -1))


def _swap_in(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, replacing what was there."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
