"""Input checks and small helpers shared by the block indexes.

Every index accepts numpy arrays, torch tensors (any device) or nested lists; these
helpers turn them into validated host arrays and raise one-line typed errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, StreamVLMError

METRICS = ("ip", "cosine")


class IndexInputError(StreamVLMError):
    """Vectors, ids, queries, k or a filter given to a block index are invalid."""


class DuplicateBlockIdError(IndexInputError):
    """A block id is added twice (in one call or already in the index)."""


class UnknownBlockIdError(IndexInputError):
    """A block id to remove or reconstruct is not in the index."""


class IndexFileError(StreamVLMError):
    """A saved index is missing, corrupt or does not match its sidecar."""


def to_numpy(x) -> np.ndarray:
    """A host numpy view/copy of an array-like (torch tensors are detached and copied)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # numpy has no bfloat16
        return x.cpu().numpy()
    return np.asarray(x)


def as_vectors(x, dim: int, what: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous float32 array ``[n, dim]``; a single ``[dim]`` vector gives n = 1."""
    arr = to_numpy(x)
    if arr.dtype.kind not in "fiub":
        raise IndexInputError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise IndexInputError(f"{what} must have shape [n, {dim}], got {list(arr.shape)}")
    # Cast first: a float64 value beyond float32's range becomes inf and is caught below.
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise IndexInputError(f"{what} contain NaN or infinite values (or values beyond float32 range)")
    return arr


def as_ids(ids, what: str = "ids") -> np.ndarray:
    """``ids`` as a 1-D int64 array of non-negative ids (-1 is the padding id in results)."""
    arr = to_numpy(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise IndexInputError(f"{what} must be one id or a 1-D sequence of ids, got shape {list(arr.shape)}")
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexInputError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise IndexInputError(f"{what} must fit in int64")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise IndexInputError(f"{what} must be >= 0, got {int(arr.min())}")
    return arr


def check_k(k) -> int:
    """``k`` as a positive Python int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise IndexInputError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def check_positive_int(value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors or queries as an index compares them: L2-normalised for ``"cosine"``."""
    return l2_normalise(x) if metric == "cosine" else x


def new_ids_sorted(existing: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``existing`` (sorted) merged with ``ids``; raises if any id repeats."""
    uniq = np.unique(ids)
    if len(uniq) != len(ids):
        dup = int(ids[np.argmax(np.bincount(np.searchsorted(uniq, ids)) > 1)])
        raise DuplicateBlockIdError(f"block id {dup} appears twice in one add()")
    present = contains(existing, uniq)
    if present.any():
        raise DuplicateBlockIdError(f"block id {int(uniq[present][0])} is already in the index")
    if len(existing) == 0 or uniq[0] > existing[-1]:
        return np.concatenate([existing, uniq])  # the usual case: ids increase over time
    return np.sort(np.concatenate([existing, uniq]))


def contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``ids`` are in the sorted array ``sorted_ids``."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def require_present(sorted_ids: np.ndarray, ids: np.ndarray) -> None:
    missing = ~contains(sorted_ids, ids)
    if missing.any():
        raise UnknownBlockIdError(f"block id {int(ids[missing][0])} is not in the index")


@dataclass(frozen=True)
class IdFilter:
    """Which block ids a search may return: an explicit set, a half-open range, or both.

    ``allowed`` (sorted, unique, restricted to the range when both are given) or
    ``lo <= id < hi``. ``None`` for both means no filter.
    """

    allowed: np.ndarray | None = None
    lo: int | None = None
    hi: int | None = None

    @staticmethod
    def make(allowed_ids=None, id_range=None) -> IdFilter | None:
        if allowed_ids is None and id_range is None:
            return None
        lo = hi = None
        if id_range is not None:
            lo, hi = _check_range(id_range)
        allowed = None
        if allowed_ids is not None:
            allowed = np.unique(as_ids(allowed_ids, "allowed_ids"))
            if lo is not None:
                allowed = allowed[(allowed >= lo) & (allowed < hi)]
        return IdFilter(allowed, lo, hi)

    def candidates(self, sorted_ids: np.ndarray) -> int:
        """How many of the stored ids pass the filter."""
        if self.allowed is not None:
            return int(contains(sorted_ids, self.allowed).sum())
        return int(np.searchsorted(sorted_ids, self.hi) - np.searchsorted(sorted_ids, self.lo))

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask over a tensor of ids (for the torch index)."""
        if self.allowed is not None:
            return torch.isin(ids, torch.from_numpy(self.allowed).to(ids.device))
        return (ids >= self.lo) & (ids < self.hi)


def _check_range(id_range) -> tuple[int, int]:
    try:
        lo, hi = id_range
    except (TypeError, ValueError):
        raise IndexInputError(f"id_range must be a pair (lo, hi), got {id_range!r}") from None
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi))
    if not ok or lo > hi:
        raise IndexInputError(f"id_range must be integers lo <= hi (half-open [lo, hi)), got {id_range!r}")
    return max(int(lo), 0), max(int(hi), 0)


def padded(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty results: scores -inf, ids -1."""
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)


def pad_to_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results widened to k columns; missing entries (faiss gives id -1, score -FLT_MAX) -> -inf."""
    out_s, out_i = padded(len(ids), k)
    width = ids.shape[1]
    out_i[:, :width] = ids
    out_s[:, :width] = np.where(ids >= 0, scores, -np.inf)
    return out_s, out_i


def count_mismatch(n_ids: int, n_vectors: int) -> IndexInputError:
    return IndexInputError(f"got {n_ids} ids for {n_vectors} vectors; give one id per vector")
