"""Search on the accelerator: a torch flat index, and whether faiss's GPU build can be used.

The faiss-gpu-cu12 wheels carry GPU code for sm_70 and sm_80 only, so on Hopper (sm_90)
faiss cannot run on the GPU; a matmul + topk in torch can, on any device torch supports.
For the few thousand to tens of thousands of summaries a stream holds, an exact search is
one small GEMV per layer, so ``TorchFlatIndex`` needs no approximate structure.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from ._inputs import (
    IdFilter,
    as_ids,
    as_vectors,
    check_k,
    check_metric,
    check_positive_int,
    count_mismatch,
    l2_normalise,
    new_ids_sorted,
    pad_to_k,
    padded,
    require_present,
)

# (major, minor) of the GPU code in the faiss GPU wheels. A cubin built for sm_XY runs on
# sm_XZ with Z >= Y and never across majors, so sm_75 and sm_86/89 work, sm_90 does not.
FAISS_GPU_ARCHS = ((7, 0), (8, 0))


def faiss_gpu_usable(device: str | torch.device | None = None) -> bool:
    """True only if faiss was built with GPU support, sees a GPU, and torch's CUDA device
    (``device``, default the current one) has a compute capability that build runs on.

    Never raises: a CPU-only faiss (no GPU symbols, or ``get_num_gpus() == 0``) gives False.
    """
    if not all(hasattr(faiss, name) for name in ("get_num_gpus", "StandardGpuResources", "index_cpu_to_gpu")):
        return False
    try:
        if faiss.get_num_gpus() < 1 or not torch.cuda.is_available():
            return False
        dev = torch.device(device) if device is not None else torch.device("cuda")
        if dev.type != "cuda":
            return False
        major, minor = torch.cuda.get_device_capability(dev.index if dev.index is not None else None)
    except Exception:  # a broken driver or GPU build means "not usable", not a crash
        return False
    return any(major == m and minor >= n for m, n in FAISS_GPU_ARCHS)


class TorchFlatIndex:
    """Exact top-k by inner product or cosine over vectors held in a torch tensor.

    Same interface as ``BlockIndex`` for ``add``/``remove``/``search``/``ids``/
    ``reconstruct``/``len``; results come back as host numpy arrays (the caller needs the
    ids on the host to fetch blocks). Vectors are stored in ``dtype`` on ``device``; on
    CUDA the product is taken in that dtype (half-precision scores are rounded before
    ranking), on the CPU in float32; scores are returned as float32. Not thread-safe.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        capacity: int = 1024,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_metric(metric)
        self.device = torch.device(device)
        self.dtype = dtype
        capacity = check_positive_int(capacity, "capacity")
        self._vectors = torch.empty((capacity, self.dim), dtype=dtype, device=self.device)
        self._row_ids = torch.empty(capacity, dtype=torch.int64, device=self.device)
        self._n = 0
        self._sorted_ids = np.empty(0, np.int64)  # host copy: checks and counts without a device sync

    def __len__(self) -> int:
        return self._n

    def ids(self) -> np.ndarray:
        """Stored block ids, ascending."""
        return self._sorted_ids.copy()

    def add(self, ids, vectors) -> None:
        """Add one vector per id; ids must be new. Cosine stores unit-norm vectors."""
        ids = as_ids(ids)
        x = self._prepare(as_vectors(vectors, self.dim))
        if len(ids) != len(x):
            raise count_mismatch(len(ids), len(x))
        if not len(ids):
            return
        sorted_ids = new_ids_sorted(self._sorted_ids, ids)
        self._reserve(self._n + len(ids))
        rows = slice(self._n, self._n + len(ids))
        self._vectors[rows] = torch.from_numpy(x).to(self.device, self.dtype)
        self._row_ids[rows] = torch.from_numpy(ids).to(self.device)
        self._n += len(ids)
        self._sorted_ids = sorted_ids

    def remove(self, ids) -> None:
        """Remove these ids (each must be present; repeats are ignored)."""
        ids = np.unique(as_ids(ids))
        require_present(self._sorted_ids, ids)
        if not len(ids):
            return
        keep = ~torch.isin(self._row_ids[: self._n], torch.from_numpy(ids).to(self.device))
        kept = int(keep.sum())
        self._vectors[:kept] = self._vectors[: self._n][keep]
        self._row_ids[:kept] = self._row_ids[: self._n][keep]
        self._n = kept
        self._sorted_ids = np.setdiff1d(self._sorted_ids, ids, assume_unique=True)

    def search(self, queries, k: int, allowed_ids=None, id_range=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: ``(scores [nq, k] float32, ids [nq, k] int64)``, best first.

        ``allowed_ids`` restricts results to those ids, ``id_range=(lo, hi)`` to
        ``lo <= id < hi``; both may be given. Missing entries are id -1, score -inf.
        """
        q = self._prepare(as_vectors(queries, self.dim, "queries"))
        k = check_k(k)
        flt = IdFilter.make(allowed_ids, id_range)
        n_cand = self._n if flt is None else flt.candidates(self._sorted_ids)
        if n_cand == 0:
            return padded(len(q), k)
        scores = self._scores(torch.from_numpy(q).to(self.device))
        if flt is not None:
            scores = scores.masked_fill(~flt.mask(self._row_ids[: self._n]), float("-inf"))
        top = scores.topk(min(k, n_cand), dim=1)
        ids = self._row_ids[top.indices]
        return pad_to_k(top.values.cpu().numpy(), ids.cpu().numpy(), k)

    def reconstruct(self, ids) -> np.ndarray:
        """Stored vectors (unit-norm for cosine) for these ids, as float32 ``[n, dim]``."""
        ids = as_ids(ids)
        require_present(self._sorted_ids, ids)
        row_ids = self._row_ids[: self._n]
        order = torch.argsort(row_ids)
        wanted = torch.from_numpy(ids).to(self.device)
        rows = order[torch.searchsorted(row_ids[order], wanted)]
        return self._vectors[rows].float().cpu().numpy()

    def _scores(self, q: torch.Tensor) -> torch.Tensor:
        stored = self._vectors[: self._n]
        if stored.dtype != torch.float32 and self.device.type == "cpu":
            stored = stored.float()  # CPU half-precision matmul is slow or missing
        return (q.to(stored.dtype) @ stored.T).float()

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return l2_normalise(x) if self.metric == "cosine" else x

    def _reserve(self, n: int) -> None:
        capacity = len(self._row_ids)
        if n <= capacity:
            return
        while capacity < n:
            capacity *= 2  # doubling: amortised O(1) copies per added block
        vectors = torch.empty((capacity, self.dim), dtype=self.dtype, device=self.device)
        row_ids = torch.empty(capacity, dtype=torch.int64, device=self.device)
        vectors[: self._n] = self._vectors[: self._n]
        row_ids[: self._n] = self._row_ids[: self._n]
        self._vectors, self._row_ids = vectors, row_ids
