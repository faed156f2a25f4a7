"""Block metadata stays flat in RAM on a long stream: it spills to disk with the block.

No model: blocks are committed straight to a ``BlockMemory`` at a real per-layer geometry
(4 KV heads x head_dim 128, so 512-float summaries per layer) with few layers and tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streamvlm.config import MemoryConfig
from streamvlm.memory.block import BlockMeta
from streamvlm.memory.manager import BlockMemory
from streamvlm.retrieval import LayeredIndex
from streamvlm.retrieval.segmented import SEAL_BLOCKS
from streamvlm.retrieval.select import select_blocks
from streamvlm.runtime.plan import AnswerPlan

LAYERS, HEADS, HEAD_DIM = 2, 4, 128
DIM = HEADS * HEAD_DIM
TOKENS_SEEN = 720  # a Qwen2.5-VL-7B 720p chunk; pruning keeps one token of it here
BACKEND = SimpleNamespace(
    name="geom-test",
    num_layers=LAYERS,
    num_kv_heads=HEADS,
    head_dim=HEAD_DIM,
    device=torch.device("cpu"),
    dtype=torch.float32,
)
KV = tuple((torch.ones(HEADS, 1, HEAD_DIM), torch.ones(HEADS, 1, HEAD_DIM)) for _ in range(LAYERS))
KEPT = torch.zeros(TOKENS_SEEN, dtype=torch.bool)
KEPT[0] = True
SUMMARY_BYTES = LAYERS * DIM * 4
META_BYTES = TOKENS_SEEN + 3 * 8 + SUMMARY_BYTES  # kept mask, positions, summary of one block
HOST_RECORD = 2 * LAYERS * HEADS * HEAD_DIM * 4 + META_BYTES  # a block in the host tier


def summary(block_id: int) -> torch.Tensor:
    return torch.randn(LAYERS, DIM, generator=torch.Generator().manual_seed(block_id))


def commit(memory: BlockMemory, block_id: int) -> None:
    memory.commit(
        KV,
        t_start=2.0 * block_id,
        t_end=2.0 * block_id + 1,
        frames=2,
        positions=torch.full((3, 1), 4 + block_id),
        kept=KEPT,
        summary=summary(block_id),
        session_record={},
    )


def disk_memory(directory: Path, **options) -> BlockMemory:
    memory = MemoryConfig(
        window=2,
        device_bytes=0,
        host_bytes=4 * HOST_RECORD,  # four blocks: the rest live on disk only
        host_codec="identity",
        disk_codec="identity",
        disk_dir=str(directory),
        disk_flush_blocks=1_000,
        **options,
    )
    return BlockMemory.create(memory, BACKEND)


def reference_index(ids) -> LayeredIndex:
    """What the memory's index held before it spilled: every summary, in RAM."""
    index = LayeredIndex(LAYERS, DIM)
    index.add(np.asarray(ids), torch.stack([summary(i) for i in ids]))
    return index


def assert_same_retrieval(memory: BlockMemory, reference: LayeredIndex) -> None:
    rng = torch.Generator().manual_seed(7)
    for _ in range(3):
        q = torch.randn(LAYERS, DIM, generator=rng)
        for mode in ("shared", "per_layer"):
            plan = AnswerPlan(top_k=8, selection=mode, neighbours=1)
            got = memory.select(plan, lambda q=q: q)
            ids = [m.id for m in memory.metas()]
            expected = select_blocks(reference, q, ids, 8, mode=mode, neighbours=1)
            assert got.layers == expected.layers
        for (sa, ia), (sb, ib) in zip(memory._index.search(q, 10), reference.search(q, 10), strict=True):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(sa, sb)


def test_metadata_bytes_stay_flat_from_1000_to_10000_blocks(tmp_path):
    memory = disk_memory(tmp_path / "s", disk_bytes=6_500 * 12_000)  # the oldest blocks get dropped
    bound = 4 * META_BYTES + SEAL_BLOCKS * SUMMARY_BYTES  # the host tier's blocks + the index tail
    seen = {}
    for block_id in range(10_000):
        commit(memory, block_id)
        if (block_id + 1) % 1000 == 0:
            seen[block_id + 1] = memory.stats().metadata_bytes
    stats = memory.stats()
    assert stats.dropped_blocks > 0 and stats.blocks == stats.indexed_blocks == 10_000 - stats.dropped_blocks
    assert max(seen.values()) <= bound, seen
    # before spilling, 10,000 blocks took 10,000 x (per_block + the index's copy of the summary)
    assert max(seen.values()) < 0.1 * 10_000 * (META_BYTES + SUMMARY_BYTES)
    metas = memory.metas()
    assert all(m.positions is None and m.summary is None for m in metas[:-4])  # on disk only
    assert all(m.tokens == 1 and m.tokens_seen == TOKENS_SEEN for m in metas)
    assert memory.spilled_index_bytes >= (len(metas) - SEAL_BLOCKS) * SUMMARY_BYTES
    # a block held only on disk loads whole: its positions, kept mask and summary come back
    (block,) = memory.load([metas[0].id])
    assert torch.equal(block.meta.summary, summary(metas[0].id)) and torch.equal(block.meta.kept, KEPT)
    assert int(block.meta.positions[0, 0]) == 4 + metas[0].id
    assert_same_retrieval(memory, reference_index([m.id for m in metas]))
    memory.close()


def test_resume_reads_summaries_written_after_the_last_index_save_from_disk(tmp_path):
    directory = tmp_path / "s"
    memory = disk_memory(directory)
    for block_id in range(1_300):
        commit(memory, block_id)
    memory.checkpoint({}, full=True)  # the index: two sealed segments and a tail
    for block_id in range(1_300, 1_400):
        commit(memory, block_id)
    memory.checkpoint({}, full=False)  # blocks made durable, the index not saved again
    memory.close()

    resumed, saved = BlockMemory.open(directory, BACKEND, {})
    assert resumed.indexed_ids() == list(range(1_400))
    assert saved["recovered"] == []  # next_block_id was saved with the last blocks
    assert resumed.stats().metadata_bytes <= SEAL_BLOCKS * SUMMARY_BYTES
    assert_same_retrieval(resumed, reference_index(range(1_400)))
    resumed.close()


def test_blocks_recovered_after_a_crash_come_back_with_their_tensors(tmp_path):
    directory = tmp_path / "s"
    memory = disk_memory(directory)
    for block_id in range(10):
        commit(memory, block_id)
    memory.checkpoint({}, full=True)
    for block_id in range(10, 13):
        commit(memory, block_id)
    memory._store.sync()  # on disk, but session.json still says next_block_id 10
    memory.close()

    resumed, saved = BlockMemory.open(directory, BACKEND, {})
    assert [m.id for m in saved["recovered"]] == [10, 11, 12]
    assert all(torch.equal(m.kept, KEPT) and m.max_position == 4 + m.id for m in saved["recovered"])
    assert resumed.indexed_ids() == list(range(13))
    resumed.close()


@pytest.mark.parametrize("host_blocks", [3, 20])
def test_without_a_disk_tier_the_host_budget_bounds_metadata(host_blocks):
    config = MemoryConfig(
        window=2, device_bytes=0, host_bytes=host_blocks * HOST_RECORD, host_codec="identity"
    )
    memory = BlockMemory.create(config, BACKEND)
    for block_id in range(1_500):
        commit(memory, block_id)
    stats = memory.stats()
    assert stats.blocks == stats.indexed_blocks <= host_blocks
    assert stats.dropped_blocks == 1_500 - stats.blocks
    assert stats.metadata_bytes <= host_blocks * (META_BYTES + SUMMARY_BYTES)  # and the index's copy
    assert_same_retrieval(memory, reference_index([m.id for m in memory.metas()]))


def test_a_block_record_without_tensors_keeps_its_scalar_fields():
    meta = BlockMeta(
        id=3,
        t_start=0.0,
        t_end=1.0,
        frames=2,
        positions=torch.full((3, 1), 40),
        kept=KEPT,
        summary=summary(3),
    )
    lean = meta.without_tensors()
    assert (lean.tokens, lean.tokens_seen, lean.max_position) == (1, TOKENS_SEEN, 40)
    assert lean.positions is None and lean.kept is None and lean.summary is None and lean.tensor_bytes == 0
    assert meta.tensor_bytes == META_BYTES
    moved = replace(meta, positions=torch.arange(7, 9).expand(3, 2))  # laid out elsewhere
    assert (moved.tokens, moved.max_position) == (2, 8)  # derived again, not copied
    empty = BlockMeta(id=4, t_start=0.0, t_end=1.0, frames=1, positions=torch.empty(3, 0), kept=KEPT)
    assert (empty.tokens, empty.max_position) == (0, -1)
    with pytest.raises(ValueError, match="give positions and kept"):
        BlockMeta(id=5, t_start=0.0, t_end=1.0, frames=1, positions=None, kept=None)
