"""Block indexes: FAISS (flat and IVF), layered, torch; checked against brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import streamvlm.retrieval.index as index_module
from streamvlm.errors import ConfigError, StreamVLMError
from streamvlm.retrieval import (
    BlockIndex,
    DuplicateBlockIdError,
    IndexFileError,
    IndexInputError,
    LayeredIndex,
    TorchFlatIndex,
    UnknownBlockIdError,
    faiss_gpu_usable,
)

DIM = 32  # the tiny model's kv_heads * head_dim
ATOL = 1e-4  # float32 dot products of length 32 with |x| ~ 6: faiss and numpy round differently
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # Single-query searches are memory-bound; OpenMP threads only add contention on a busy runner.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def gaussian(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def video_like(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Summaries that drift slowly and jump at scene cuts, as consecutive video blocks do."""
    rng = np.random.default_rng(seed)
    scenes = np.cumsum(rng.random(n) < 0.01)
    centres = 3.0 * rng.standard_normal((scenes[-1] + 1, dim))
    drift = np.cumsum(0.05 * rng.standard_normal((n, dim)), axis=0)
    return (centres[scenes] + drift + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Exact scores [nq, n] in float64."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x, q = unit(x), unit(q)
    return q @ x.T


def assert_topk(scores, ids, ref, ref_ids, k, allowed=None):
    """``(scores, ids)`` is a correct top-k of the reference score matrix ``ref [nq, n]``.

    Ties within float32 rounding may come back in either order, so ids are compared
    through their reference scores: every returned id is allowed and unique, its score
    is its reference score, and the returned scores are the reference top-k scores.
    """
    ref = ref.copy()
    if allowed is not None:
        ref[:, ~np.isin(ref_ids, allowed)] = -np.inf
    n_valid = int(np.isfinite(ref[0]).sum())
    assert scores.shape == ids.shape == (len(ref), k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    want = -np.sort(-ref, axis=1)[:, : min(k, n_valid)]
    pos = {int(i): j for j, i in enumerate(ref_ids)}
    for row in range(len(ref)):
        got = ids[row, : min(k, n_valid)]
        assert (got >= 0).all() and len(set(got.tolist())) == len(got)
        np.testing.assert_allclose(scores[row, : len(got)], want[row], atol=ATOL, rtol=1e-5)
        np.testing.assert_allclose(scores[row, : len(got)], ref[row, [pos[int(i)] for i in got]], atol=ATOL)
        assert (ids[row, len(got) :] == -1).all() and np.isneginf(scores[row, len(got) :]).all()


def recall(ids: np.ndarray, ref: np.ndarray, k: int) -> float:
    true = np.argsort(-ref, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids[:, :k], true, strict=True)]))


def ivf_index(x: np.ndarray, ids: np.ndarray, metric: str = "ip", nlist: int = 16) -> BlockIndex:
    index = BlockIndex(DIM, metric=metric, ivf_threshold=len(x) // 2, nlist=nlist)
    index.add(ids, x)
    assert index.kind == "ivf" and index.nlist == nlist
    return index


# ---------------------------------------------------------------------------- BlockIndex


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_flat_equals_brute_force(metric):
    x, q = gaussian(500), gaussian(25, seed=1)  # 25 queries: faiss's BLAS path (nq >= 20)
    ids = np.arange(1000, 1500)
    index = BlockIndex(DIM, metric=metric)
    index.add(ids, x)
    assert index.kind == "flat" and len(index) == 500
    ref = brute_scores(x, q, metric)
    for k in (1, 2, 7, 64, 499, 500, 501, 2000):
        scores, got = index.search(q, k)
        assert_topk(scores, got, ref, ids, k)
    scores, got = index.search(q[0], 3)  # one [dim] query is nq = 1
    assert got.shape == (1, 3)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_ivf_with_full_nprobe_equals_brute_force(metric):
    x, q = gaussian(800), gaussian(25, seed=1)
    ids = np.arange(800) * 3
    index = ivf_index(x, ids, metric)
    index.nprobe = index.nlist
    ref = brute_scores(x, q, metric)
    for k in (1, 5, 33, 200, 800, 805):
        assert_topk(*index.search(q, k), ref, ids, k)


def test_ivf_small_nprobe_recall_and_exhaustive_when_k_covers_all():
    x = video_like(4000)
    q = x[np.random.default_rng(3).choice(4000, 50)] + 0.5 * gaussian(50, seed=4)
    ids = np.arange(4000)
    index = BlockIndex(DIM, ivf_threshold=1000, nprobe=4)
    index.add(ids, x)
    assert index.kind == "ivf" and index.nlist == 63  # round(sqrt(4000))
    ref = brute_scores(x, q, "ip")
    _, got = index.search(q, 10)
    assert recall(got, ref, 10) >= 0.95  # measured 1.00 on this data with 4 of 63 lists
    # On clusterless Gaussian data 4 of 63 lists find far fewer: the trade-off nprobe sets.
    g_index = BlockIndex(DIM, ivf_threshold=1000, nprobe=4)
    g_index.add(ids, gaussian(4000))
    _, g_got = g_index.search(gaussian(50, seed=5), 10)
    assert recall(g_got, brute_scores(gaussian(4000), gaussian(50, seed=5), "ip"), 10) < 0.6
    # k >= n ("return every block", lossless mode) scans every list: nothing is missed.
    scores, got = index.search(q[:3], 4000)
    assert_topk(scores, got, ref[:3], ids, 4000)


def test_switch_flat_to_ivf_and_back_keeps_ids_and_results():
    x, q = gaussian(1300), gaussian(21, seed=1)
    ids = np.arange(5, 5 + 1300) * 2
    ref_index = BlockIndex(DIM, ivf_threshold=None)  # stays flat: the reference
    index = BlockIndex(DIM, ivf_threshold=300, nprobe=10_000)  # nprobe >= nlist: exact
    seen = []
    for lo in range(0, 1300, 100):
        for each in (ref_index, index):
            each.add(ids[lo : lo + 100], x[lo : lo + 100])
        seen.append((index.kind, index.nlist))
        np.testing.assert_array_equal(index.ids(), ref_index.ids())
        np.testing.assert_array_equal(index.reconstruct(index.ids()), x[: lo + 100])
        assert_topk(*index.search(q, 50), brute_scores(x[: lo + 100], q, "ip"), ids[: lo + 100], 50)
    assert seen[1] == ("flat", None) and seen[2] == ("ivf", 7)  # 300 vectors: min(17, 300 // 39)
    assert seen[11] == ("ivf", 30)  # retrained at 4 x 300 = 1200 vectors
    # Dropping below half the threshold returns to exact flat search, ids intact.
    dropped = ids[:1160]
    index.remove(dropped)
    assert index.kind == "flat" and len(index) == 140
    np.testing.assert_array_equal(index.ids(), ids[1160:])
    assert_topk(*index.search(q, 200), brute_scores(x[1160:], q, "ip"), ids[1160:], 200)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removed_ids_never_come_back(kind):
    x, q = gaussian(600), gaussian(25, seed=1)
    ids = np.arange(600) + 7
    index = ivf_index(x, ids) if kind == "ivf" else BlockIndex(DIM)
    if kind == "flat":
        index.add(ids, x)
    index.nprobe = 10_000
    gone = np.random.default_rng(2).choice(ids, 240, replace=False)
    index.remove(gone)
    assert len(index) == 360 and index.kind == kind
    keep = ~np.isin(ids, gone)
    scores, got = index.search(q, 600)
    assert not np.isin(got, gone).any()
    assert_topk(scores, got, brute_scores(x[keep], q, "ip"), ids[keep], 600)
    with pytest.raises(UnknownBlockIdError):
        index.reconstruct(gone[:1])
    with pytest.raises(UnknownBlockIdError):
        index.remove(gone[:1])
    index.add(gone[:1], x[gone[:1] - 7])  # a removed id may be added again
    assert gone[0] in index.search(x[gone[0] - 7], 1)[1]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_id_filters_equal_brute_force_restricted(kind, metric):
    x, q = gaussian(900), gaussian(25, seed=1)
    ids = np.arange(900) * 2  # even ids only: filters also name ids that are not stored
    if kind == "ivf":
        index = ivf_index(x, ids, metric)
        index.nprobe = 10_000
    else:
        index = BlockIndex(DIM, metric=metric)
        index.add(ids, x)
    ref = brute_scores(x, q, metric)
    rng = np.random.default_rng(5)
    allowed = rng.choice(1800, 300, replace=False)  # half of them odd: not stored
    cases = [
        ({"id_range": (100, 700)}, ids[(ids >= 100) & (ids < 700)]),
        ({"allowed_ids": allowed}, allowed),
        ({"allowed_ids": allowed, "id_range": (0, 900)}, allowed[allowed < 900]),
        ({"id_range": (1790, 5000)}, ids[ids >= 1790]),  # 5 stored ids: k pads
    ]
    for kwargs, permitted in cases:
        for k in (1, 10, 400):
            scores, got = index.search(q, k, **kwargs)
            assert np.isin(got[got >= 0], permitted).all()
            assert_topk(scores, got, ref, ids, k, allowed=permitted)


def test_ivf_selective_filter_is_searched_exactly_with_small_nprobe():
    """A filter passing at most nprobe / nlist of the ids scans every list (no more
    distances than an unfiltered probe); with a fixed nprobe = 2 this gave recall 0.1."""
    x, q = video_like(3000), gaussian(5, seed=1)
    ids = np.arange(3000)
    index = BlockIndex(DIM, ivf_threshold=1000, nprobe=2)
    index.add(ids, x)
    assert index.nlist == 55  # 100 candidates <= 3000 * 2 / 55
    ref = brute_scores(x, q, "ip")
    for k in (1, 10, 100):
        assert_topk(*index.search(q, k, id_range=(2900, 3000)), ref, ids, k, allowed=ids[2900:])


def test_empty_results_are_padding():
    index = BlockIndex(DIM)
    scores, got = index.search(gaussian(2), 4)
    assert (got == -1).all() and np.isneginf(scores).all() and scores.shape == (2, 4)
    index.add([3, 4], gaussian(2))
    for kwargs in ({"allowed_ids": [5, 6]}, {"allowed_ids": []}, {"id_range": (5, 9)}, {"id_range": (4, 4)}):
        scores, got = index.search(gaussian(1), 2, **kwargs)
        assert (got == -1).all() and np.isneginf(scores).all()
    index.add([], np.empty((0, DIM)))  # adding nothing is allowed
    assert len(index) == 2


def test_cosine_keeps_zero_vectors_at_score_zero():
    index = BlockIndex(4, metric="cosine")
    index.add([0, 1], [[0, 0, 0, 0], [1, 0, 0, 0]])
    scores, got = index.search([[2.0, 0, 0, 0]], 2)
    np.testing.assert_array_equal(got, [[1, 0]])
    np.testing.assert_allclose(scores, [[1.0, 0.0]])


def test_accepts_torch_tensors():
    x = torch.from_numpy(gaussian(50))
    index = BlockIndex(DIM)
    index.add(torch.arange(50), x.half())
    _, got = index.search(x[:2].bfloat16(), 1)
    np.testing.assert_array_equal(got[:, 0], [0, 1])


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(kind, tmp_path):
    x, q = gaussian(800), gaussian(25, seed=1)
    ids = np.arange(800) + 11
    index = ivf_index(x, ids, "cosine") if kind == "ivf" else BlockIndex(DIM, metric="cosine")
    if kind == "flat":
        index.add(ids, x)
    index.remove(ids[::7])
    path = tmp_path / "sub" / "layer0.faiss"
    index.save(path)
    index.save(path)  # overwriting an earlier save is fine
    loaded = BlockIndex.load(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["layer0.faiss", "layer0.faiss.json"]
    assert (loaded.kind, loaded.nlist, loaded.nprobe, loaded.metric) == (
        index.kind,
        index.nlist,
        index.nprobe,
        index.metric,
    )
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    for kwargs in ({}, {"id_range": (100, 500)}, {"allowed_ids": ids[::3]}):
        for a, b in zip(index.search(q, 20, **kwargs), loaded.search(q, 20, **kwargs), strict=True):
            np.testing.assert_array_equal(a, b)
    loaded.add([5000], x[:1])  # the loaded index keeps working (ids, direct map)
    loaded.remove(ids[1:3])
    assert 5000 in loaded.ids() and len(loaded) == len(index) - 1


def test_load_rejects_missing_corrupt_and_mismatched_files(tmp_path):
    with pytest.raises(IndexFileError):
        BlockIndex.load(tmp_path / "absent.faiss")
    small, big = BlockIndex(DIM), BlockIndex(DIM)
    small.add([1], gaussian(1))
    big.add([1, 2], gaussian(2))
    small.save(tmp_path / "a.faiss")
    big.save(tmp_path / "b.faiss")
    (tmp_path / "b.faiss.json").replace(tmp_path / "a.faiss.json")  # sidecar of another save
    with pytest.raises(IndexFileError, match="does not match"):
        BlockIndex.load(tmp_path / "a.faiss")
    big.save(tmp_path / "c.faiss")
    (tmp_path / "c.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFileError):
        BlockIndex.load(tmp_path / "c.faiss")


BAD_CALLS = {
    "wrong dim": (IndexInputError, lambda ix: ix.add([9], np.zeros((1, DIM + 1)))),
    "wrong query dim": (IndexInputError, lambda ix: ix.search(np.zeros((1, 3)), 1)),
    "3-D vectors": (IndexInputError, lambda ix: ix.add([9], np.zeros((1, 1, DIM)))),
    "nan vector": (IndexInputError, lambda ix: ix.add([9], np.full((1, DIM), np.nan))),
    "inf query": (IndexInputError, lambda ix: ix.search(np.full((1, DIM), np.inf), 1)),
    "beyond float32": (IndexInputError, lambda ix: ix.add([9], np.full((1, DIM), 1e300))),
    "text vectors": (IndexInputError, lambda ix: ix.add([9], np.array([["a"] * DIM]))),
    "duplicate in call": (DuplicateBlockIdError, lambda ix: ix.add([9, 9], np.zeros((2, DIM)))),
    "duplicate of stored": (DuplicateBlockIdError, lambda ix: ix.add([9, 1], np.zeros((2, DIM)))),
    "count mismatch": (IndexInputError, lambda ix: ix.add([9, 10], np.zeros((1, DIM)))),
    "negative id": (IndexInputError, lambda ix: ix.add([-1], np.zeros((1, DIM)))),
    "float id": (IndexInputError, lambda ix: ix.add([1.5], np.zeros((1, DIM)))),
    "k = 0": (IndexInputError, lambda ix: ix.search(np.zeros((1, DIM)), 0)),
    "k = 1.5": (IndexInputError, lambda ix: ix.search(np.zeros((1, DIM)), 1.5)),
    "k = True": (IndexInputError, lambda ix: ix.search(np.zeros((1, DIM)), True)),
    "range lo > hi": (IndexInputError, lambda ix: ix.search(np.zeros((1, DIM)), 1, id_range=(5, 2))),
    "range not a pair": (IndexInputError, lambda ix: ix.search(np.zeros((1, DIM)), 1, id_range=5)),
    "remove unknown": (UnknownBlockIdError, lambda ix: ix.remove([1, 77])),
    "reconstruct unknown": (UnknownBlockIdError, lambda ix: ix.reconstruct([77])),
}


@pytest.mark.parametrize("make", [BlockIndex, TorchFlatIndex], ids=["faiss", "torch"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_inputs_raise_typed_one_line_errors(make, case):
    error, call = BAD_CALLS[case]
    index = make(DIM)
    index.add([1, 2], gaussian(2))
    with pytest.raises(error) as info:
        call(index)
    assert isinstance(info.value, StreamVLMError) and "\n" not in str(info.value)
    np.testing.assert_array_equal(index.ids(), [1, 2])  # a failed call changes nothing


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 0}, {"dim": DIM, "metric": "l2"}, {"dim": DIM, "nprobe": 0}, {"dim": DIM, "ivf_threshold": 0}],
)
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        BlockIndex(**kwargs)


# ---------------------------------------------------------------------------- LayeredIndex


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_layered_per_layer_equals_brute_force(metric):
    layers, n = 4, 300
    x = gaussian(n * layers).reshape(n, layers, DIM)
    q = gaussian(layers, seed=1)
    ids = np.arange(n) + 100
    index = LayeredIndex(layers, DIM, metric=metric)
    index.add(ids[:1], x[0])  # one block: [num_layers, dim]
    index.add(ids[1:], x[1:])  # a batch: [n, num_layers, dim]
    hits = index.search(q, 10)
    assert len(hits) == layers
    for layer, (scores, got) in enumerate(hits):
        ref = brute_scores(x[:, layer], q[layer : layer + 1], metric)
        assert_topk(scores[None], got[None], ref, ids, 10)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_layered_groups_sum_ip_or_average_cosine(metric):
    layers, n = 5, 300
    x = gaussian(n * layers).reshape(n, layers, DIM)
    q = gaussian(layers, seed=1)
    ids = np.arange(n)
    index = LayeredIndex(layers, DIM, groups=2, metric=metric)
    assert index.groups == (range(0, 2), range(2, 4), range(4, 5))
    index.add(ids, x)
    hits = index.search(q, 15, id_range=(0, 250))
    assert len(hits) == layers
    for group in index.groups:
        per_layer = np.stack([brute_scores(x[:, la], q[la : la + 1], metric)[0] for la in group])
        ref = per_layer.sum(0) if metric == "ip" else per_layer.mean(0)
        scores, got = hits[group.start]
        for layer in group:  # every layer of the group gets the group's ranking
            np.testing.assert_array_equal(hits[layer][1], got)
        assert_topk(scores[None], got[None], ref[None], ids, 15, allowed=ids[:250])


def test_layered_remove_save_load(tmp_path):
    layers = 6
    x = gaussian(400 * layers).reshape(400, layers, DIM)
    q = gaussian(layers, seed=1)
    index = LayeredIndex(layers, DIM, groups=4, metric="cosine", ivf_threshold=200, nlist=8)
    index.add(np.arange(400), x)
    index.remove(np.arange(0, 400, 5))
    assert len(index) == 320
    assert not any(np.isin(ids, np.arange(0, 400, 5)).any() for _, ids in index.search(q, 400))
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # replace an earlier save
    loaded = LayeredIndex.load(tmp_path / "idx")
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert loaded.groups == index.groups and loaded.metric == "cosine"
    for a, b in zip(index.search(q, 30), loaded.search(q, 30), strict=True):
        np.testing.assert_array_equal(np.stack(a), np.stack(b))
    with pytest.raises(IndexFileError):
        LayeredIndex.load(tmp_path / "absent")


def test_layered_rejects_bad_input_without_partial_adds():
    index = LayeredIndex(3, DIM, groups=2)
    index.add(1, gaussian(3))
    with pytest.raises(IndexInputError):
        index.add(2, gaussian(2))  # wrong layer count
    with pytest.raises(DuplicateBlockIdError):
        index.add([3, 1], gaussian(6).reshape(2, 3, DIM))
    bad = gaussian(3)
    bad[2, 0] = np.nan  # only the last group's part is bad
    with pytest.raises(IndexInputError):
        index.add(4, bad)
    with pytest.raises(IndexInputError):
        index.search(gaussian(6).reshape(2, 3, DIM), 1)  # one question at a time
    assert all(len(each) == 1 for each in index._indexes)
    with pytest.raises(ConfigError):
        LayeredIndex(3, DIM, index_factory=lambda d, m: TorchFlatIndex(d, m), nprobe=3)
    with pytest.raises(ConfigError):
        LayeredIndex(3, DIM, index_factory=lambda d, m: TorchFlatIndex(d, m)).save("unused")


# ---------------------------------------------------------------------------- torch / GPU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_torch_flat_index_equals_block_index(metric, device):
    x, q = gaussian(700), gaussian(25, seed=1)
    ids = np.arange(700) * 2
    faiss_index = BlockIndex(DIM, metric=metric)
    torch_index = TorchFlatIndex(DIM, metric=metric, device=device, capacity=16)  # grows 6 times
    faiss_index.add(ids, x)
    for lo in range(0, 700, 100):
        torch_index.add(torch.from_numpy(ids[lo : lo + 100]), torch.from_numpy(x[lo : lo + 100]).to(device))
    gone = ids[::3]
    faiss_index.remove(gone)
    torch_index.remove(gone)
    np.testing.assert_array_equal(torch_index.ids(), faiss_index.ids())
    np.testing.assert_allclose(
        torch_index.reconstruct(ids[1:9:3]), faiss_index.reconstruct(ids[1:9:3]), atol=1e-6
    )
    ref = brute_scores(x, q, metric)
    ref[:, np.isin(ids, gone)] = -np.inf
    for kwargs in ({}, {"id_range": (300, 900)}, {"allowed_ids": np.arange(0, 1400, 7)}):
        for k in (1, 16, 500, 1000):
            t_scores, t_ids = torch_index.search(q, k, **kwargs)
            f_scores, f_ids = faiss_index.search(q, k, **kwargs)
            np.testing.assert_allclose(t_scores, f_scores, atol=ATOL)
            assert (t_ids == f_ids).mean() > 0.999  # only float32 near-ties may swap
            allowed = faiss_index.ids()
            if "id_range" in kwargs:
                allowed = allowed[(allowed >= 300) & (allowed < 900)]
            if "allowed_ids" in kwargs:
                allowed = np.intersect1d(allowed, kwargs["allowed_ids"])
            assert_topk(t_scores, t_ids, ref, ids, k, allowed=allowed)


def test_faiss_gpu_usable_checks_build_and_compute_capability(monkeypatch):
    assert faiss_gpu_usable() in (True, False)  # never raises, whatever this machine has
    if not hasattr(faiss, "StandardGpuResources") or not torch.cuda.is_available():
        assert faiss_gpu_usable("cuda") is False  # CPU faiss build (no GPU symbols) or no CUDA
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda *a: None, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, usable in (
        ((7, 0), True),
        ((7, 5), True),
        ((8, 0), True),
        ((8, 9), True),
        ((9, 0), False),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert faiss_gpu_usable("cuda:0") is usable, capability
    assert faiss_gpu_usable("cpu") is False
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert faiss_gpu_usable("cuda:0") is False

    def broken():
        raise RuntimeError("driver")

    monkeypatch.setattr(faiss, "get_num_gpus", broken)
    assert faiss_gpu_usable("cuda:0") is False


def test_block_index_gpu_copy_path_maps_rows_to_ids(monkeypatch):
    """The faiss-GPU search path, with the GPU copy played by a CPU clone."""
    copies = []

    def to_gpu(resources, device, index):
        copies.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(index_module, "faiss_gpu_usable", lambda device: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    x, q = gaussian(300), gaussian(4, seed=1)
    ids = np.arange(300) * 5
    gpu, cpu = BlockIndex(DIM, device="cuda:1"), BlockIndex(DIM)
    for each in (gpu, cpu):
        each.add(ids, x)
        each.remove(ids[:50])
    for kwargs in ({}, {"id_range": (0, 700)}):  # the filtered search runs on the CPU index
        for a, b in zip(gpu.search(q, 20, **kwargs), cpu.search(q, 20, **kwargs), strict=True):
            np.testing.assert_array_equal(a, b)
    gpu.add([7], x[:1])
    assert 7 in gpu.search(x[:1], 1)[1]  # the copy is remade after a change
    assert copies == [1, 1]
