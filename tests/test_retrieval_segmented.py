"""SegmentedIndex: sealed, memory-mapped segments rank exactly as one in-RAM LayeredIndex."""

from __future__ import annotations

import numpy as np
import pytest

from streamvlm.retrieval import (
    DuplicateBlockIdError,
    IndexFileError,
    LayeredIndex,
    SegmentedIndex,
    UnknownBlockIdError,
)
from streamvlm.retrieval.segmented import SEGMENTS_DIR
from streamvlm.retrieval.select import select_blocks

LAYERS, DIM = 4, 16


def both(tmp_path, n: int, seal: int = 8, seed: int = 0, **layout):
    """A SegmentedIndex sealing every ``seal`` blocks and a LayeredIndex, holding the same ``n`` blocks."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, LAYERS, DIM)).astype(np.float32)
    segmented = SegmentedIndex(LAYERS, DIM, tmp_path / "index", seal_blocks=seal, **layout)
    reference = LayeredIndex(LAYERS, DIM, **layout)
    for i in range(n):
        segmented.add(i, vectors[i])
        reference.add(i, vectors[i])
    return segmented, reference, rng


def assert_same_hits(a, b) -> None:
    assert len(a) == len(b)
    for (sa, ia), (sb, ib) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)  # the same ids in the same order
        np.testing.assert_array_equal(sa, sb)  # and the same float32 scores, bit for bit


@pytest.mark.parametrize(
    "layout", [{}, {"metric": "cosine"}, {"groups": 3}, {"groups": 2, "metric": "cosine"}]
)
def test_search_equals_one_layered_index(tmp_path, layout):
    segmented, reference, rng = both(tmp_path, 45, **layout)
    assert segmented.sealed_blocks == 40 and len(segmented) == 45
    np.testing.assert_array_equal(segmented.ids(), reference.ids())
    for _ in range(5):
        q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
        for k in (1, 5, 45, 100):
            assert_same_hits(segmented.search(q, k), reference.search(q, k))
        allowed = sorted(rng.choice(45, 12, replace=False).tolist())
        assert_same_hits(
            segmented.search(q, 7, allowed_ids=allowed), reference.search(q, 7, allowed_ids=allowed)
        )
        assert_same_hits(segmented.search(q, 7, id_range=(6, 30)), reference.search(q, 7, id_range=(6, 30)))
        assert_same_hits(
            segmented.search(q, 4, allowed_ids=allowed, id_range=(10, 40)),
            reference.search(q, 4, allowed_ids=allowed, id_range=(10, 40)),
        )


@pytest.mark.parametrize("layout", [{}, {"groups": 2}])
def test_unordered_search_returns_every_hit_unmerged(tmp_path, layout):
    """``ordered=False`` (block selection summing every block's scores): the same hits with the
    same scores as the ranked search, in any order."""
    segmented, reference, rng = both(tmp_path, 45, **layout)
    q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
    allowed = sorted(rng.choice(45, 30, replace=False).tolist())
    for kwargs in ({}, {"allowed_ids": allowed}):
        got = segmented.search(q, 45, ordered=False, **kwargs)
        want = reference.search(q, 45, **kwargs)
        for (sa, ia), (sb, ib) in zip(got, want, strict=True):
            real = ib >= 0
            got_hits = sorted(zip(ia.tolist(), sa.tolist(), strict=True))
            assert got_hits == sorted(zip(ib[real].tolist(), sb[real].tolist(), strict=True))


def test_ties_are_broken_as_one_flat_index_breaks_them(tmp_path):
    segmented = SegmentedIndex(LAYERS, DIM, tmp_path / "index", seal_blocks=4)
    reference = LayeredIndex(LAYERS, DIM)
    same = np.ones((LAYERS, DIM), np.float32)
    for i in range(14):
        segmented.add(i, same)
        reference.add(i, same)
    for k in (1, 3, 6, 14, 20):
        assert_same_hits(segmented.search(same, k), reference.search(same, k))


@pytest.mark.parametrize("mode", ["shared", "per_layer"])
def test_block_selection_is_unchanged(tmp_path, mode):
    segmented, reference, rng = both(tmp_path, 37, seal=5)
    candidates = list(range(3, 37))
    for _ in range(5):
        q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
        a = select_blocks(segmented, q, candidates, 6, mode=mode, neighbours=1, always={36})
        b = select_blocks(reference, q, candidates, 6, mode=mode, neighbours=1, always={36})
        assert a.layers == b.layers


def test_removal_from_the_tail_and_from_sealed_segments(tmp_path):
    segmented, reference, rng = both(tmp_path, 30, seal=8)
    gone = [0, 3, 9, 17, 28, 29]
    segmented.remove(gone)
    reference.remove(gone)
    assert len(segmented) == 24
    np.testing.assert_array_equal(segmented.ids(), reference.ids())
    q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
    assert_same_hits(segmented.search(q, 30), reference.search(q, 30))
    with pytest.raises(UnknownBlockIdError):
        segmented.remove([3])  # already gone: nothing changes
    with pytest.raises(DuplicateBlockIdError):
        segmented.add(5, np.zeros((LAYERS, DIM)))  # sealed, still held
    assert len(segmented) == 24


def test_save_rewrites_only_the_tail_and_load_restores_everything(tmp_path):
    segmented, reference, rng = both(tmp_path, 26, seal=8)
    directory = tmp_path / "index"
    segmented.remove([1, 20])
    reference.remove([1, 20])
    segmented.save(directory)
    sealed = sorted((directory / SEGMENTS_DIR).iterdir())
    assert len(sealed) == 6  # three segments of two files, written when sealed
    stamps = [p.stat().st_mtime_ns for p in sealed]
    segmented.save(directory)
    assert [p.stat().st_mtime_ns for p in sorted((directory / SEGMENTS_DIR).iterdir())] == stamps
    loaded = SegmentedIndex.load(directory, seal_blocks=8)
    np.testing.assert_array_equal(loaded.ids(), reference.ids())
    q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
    assert_same_hits(loaded.search(q, 10), reference.search(q, 10))
    with pytest.raises(Exception, match="its own directory"):
        segmented.save(tmp_path / "elsewhere")


def test_emptied_segments_and_files_sealed_after_the_last_save_are_deleted_at_save(tmp_path):
    segmented, _, _ = both(tmp_path, 20, seal=8)
    directory = tmp_path / "index"
    segmented.remove(list(range(8)))  # the first segment has no row left
    segmented.save(directory)
    assert len(list((directory / SEGMENTS_DIR).iterdir())) == 2  # one segment, two files
    (directory / SEGMENTS_DIR / "000000000099-orphan.ids.npy").write_bytes(b"left by a crash")
    SegmentedIndex.load(directory, seal_blocks=8).save(directory)
    assert len(list((directory / SEGMENTS_DIR).iterdir())) == 2


def test_a_layered_index_saved_whole_loads_as_the_tail(tmp_path):
    _, reference, rng = both(tmp_path, 12)
    reference.save(tmp_path / "old")
    loaded = SegmentedIndex.load(tmp_path / "old", seal_blocks=4)
    q = rng.standard_normal((LAYERS, DIM)).astype(np.float32)
    assert_same_hits(loaded.search(q, 12), reference.search(q, 12))
    loaded.add(12, np.zeros((LAYERS, DIM)))  # over seal_blocks: the old rows are sealed
    assert loaded.sealed_blocks == 13 and loaded.nbytes == 0


def test_a_missing_segment_file_is_an_index_file_error(tmp_path):
    segmented, _, _ = both(tmp_path, 10, seal=4)
    segmented.save(tmp_path / "index")
    next((tmp_path / "index" / SEGMENTS_DIR).glob("*.vectors.npy")).unlink()
    with pytest.raises(IndexFileError):
        SegmentedIndex.load(tmp_path / "index")


def test_sealed_vectors_are_memory_mapped_not_held_in_ram(tmp_path):
    segmented, _, _ = both(tmp_path, 20, seal=8)
    assert segmented.nbytes == 4 * 4 * LAYERS * DIM  # the tail's 4 blocks only
    assert segmented.disk_bytes > 16 * LAYERS * DIM * 4
    segment = segmented._segments[0]
    assert isinstance(segment._vectors, np.memmap) and not segment._vectors.flags.writeable
