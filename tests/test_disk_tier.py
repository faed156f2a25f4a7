"""The disk tier: round trips, memory maps, reopen, segments, budget and its policy, checksums, crash safety."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _blocks import random_block

from streamvlm.errors import StreamVLMError
from streamvlm.memory.block import Block, StoredBlock
from streamvlm.memory.codec import IdentityCodec
from streamvlm.memory.disk import (
    BlockNotFoundError,
    CorruptBlockError,
    DirectoryNotWritableError,
    DiskBudgetError,
    DiskLog,
    DiskTierClosedError,
    DiskTierLockedError,
    InvalidBlockError,
    NotASessionDirError,
    UnsupportedFormatError,
)
from streamvlm.memory.disk_tier import DiskTier
from streamvlm.memory.policy import get_policy
from streamvlm.memory.segments import HEADER_SIZE, encode_record
from streamvlm.memory.tiered import TieredStore
from streamvlm.memory.tiers import DeviceTier

CHILD = Path(__file__).with_name("disk_tier_crash_child.py")
_spec = importlib.util.spec_from_file_location("disk_tier_crash_child", CHILD)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)
make_block = child.make_block


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes: equality of these is bit-exactness (NaN, -0.0 and bfloat16 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_block(got: StoredBlock, want: StoredBlock) -> None:
    assert got.meta == want.meta
    assert list(got.tensors) == list(want.tensors)
    for name, w in want.tensors.items():
        g = got.tensors[name]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert raw(g) == raw(w), name


def record_size(tmp_path: Path, big_bytes: int) -> int:
    """Bytes one ``make_block(_, big_bytes)`` takes in a segment."""
    with DiskLog(tmp_path / f"probe-{big_bytes}") as probe:
        probe.put(make_block(0, big_bytes))
        return probe.nbytes


def layout_size(block: StoredBlock) -> int:
    """Bytes of the layout record a segment holds once for blocks shaped like ``block``."""
    return encode_record(block).layout_len


def table(directory: Path) -> dict:
    return json.loads((directory / "table.json").read_text())


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "segments").iterdir())


# --- round trip and memory maps -----------------------------------------------------------


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path):
    specials = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40, -3.5])
    tensors = {
        "f32": torch.cat([torch.randn(29), specials]).reshape(2, 17),
        "f16": torch.randn(3, 5, 7).half(),
        "bf16": torch.cat([torch.randn(11), specials]).bfloat16(),
        "f64": torch.randn(4, dtype=torch.float64),
        "u8": torch.randint(0, 256, (3, 13), dtype=torch.uint8),
        "i8": torch.randint(-128, 128, (9,), dtype=torch.int8),
        "i32": torch.randint(-(2**31), 2**31 - 1, (2, 2), dtype=torch.int32),
        "i64": torch.randint(-(2**62), 2**62, (3, 1, 4)),
        "bool": torch.rand(37) > 0.5,
        "f8": torch.randn(6, 6).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.empty(0, 8, dtype=torch.float16),
        "transposed": torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),  # not contiguous
    }
    block = StoredBlock({"id": 7, "t_start": 3.5, "t_end": 4.0, "frames": 2, "codec": "identity"}, tensors)
    with DiskLog(tmp_path / "s") as tier:
        tier.put(block)
        got = tier.get(7)
        assert_same_block(got, block)
        # Every non-empty tensor is a view into the memory map aligned for its dtype.
        assert all(t.data_ptr() % t.element_size() == 0 for t in got.tensors.values() if t.numel())
        assert tier.meta(7) == block.meta and 7 in tier and len(tier) == 1
    with DiskLog.open(tmp_path / "s") as tier:
        assert_same_block(tier.get(7), block)


def _maps_of(path_prefix: str) -> list[tuple[int, int]]:
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith(path_prefix):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end))
    return spans


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_reads_are_memory_mapped_not_copied(tmp_path):
    directory = tmp_path / "s"
    mb = 1 << 20
    with DiskLog(directory, segment_bytes=32 * mb) as tier:
        for i in range(12):  # 96 MiB of blocks over 4 segments
            tier.put(make_block(i, big_bytes=8 * mb))
        before = _rss_anon()
        blocks = tier.get_many(range(12))
        grown = _rss_anon() - before
        spans = _maps_of(str(directory / "segments"))
        big = [b.tensors["big"] for b in blocks]
        assert sum(t.nbytes for t in big) == 96 * mb
        # Every tensor lies inside a mapping of a segment file...
        for block in blocks:
            for t in block.tensors.values():
                assert any(s <= t.data_ptr() and t.data_ptr() + t.nbytes <= e for s, e in spans)
        # ...so holding 96 MiB of blocks costs almost no anonymous (heap) memory.
        assert grown < 16 * mb, grown
        # A second read shares the memory of the first.
        assert tier.get(3).tensors["big"].data_ptr() == big[3].data_ptr()
        assert_same_block(blocks[5], make_block(5, 8 * mb))
    # Tensors stay valid after close (the map lives as long as they do), and writing to
    # one is private: it never reaches the file.
    big[0].fill_(0)
    with DiskLog.open(directory) as tier:
        assert_same_block(tier.get(0), make_block(0, 8 * mb))


# --- reopen, segments, budget -------------------------------------------------------------


def test_reopen_returns_identical_blocks_in_order(tmp_path):
    directory = tmp_path / "s"
    ids = [3, 1, 10, 11, 2, 40]  # put order is age order, whatever the ids
    with DiskLog(directory, segment_bytes=4096) as tier:
        for i in ids:
            tier.put(make_block(i, big_bytes=1500))
        nbytes = tier.nbytes
    with DiskLog.open(directory) as tier:
        assert tier.recovery.clean
        assert tier.ids() == ids and tier.nbytes == nbytes
        for got, i in zip(tier.get_many(ids), ids, strict=True):
            assert_same_block(got, make_block(i, 1500))
        tier.put(make_block(41, 1500))  # and appending goes on
    with DiskLog(directory) as tier:  # the constructor reopens too
        assert tier.ids() == [*ids, 41]


def test_segments_roll_over(tmp_path):
    directory = tmp_path / "s"
    small, big = layout_size(make_block(0, 1000)), layout_size(make_block(0, 20000))
    with DiskLog(directory, segment_bytes=8192, flush_every=None) as tier:
        tier.put(make_block(0, big_bytes=1000))
        record = tier.nbytes
        per_segment = (8192 - small) // record  # each segment holds the blocks' layout once
        for i in range(1, 10):
            tier.put(make_block(i, big_bytes=1000))
        tier.put(make_block(10, big_bytes=20000))  # bigger than a segment: one of its own
        tier.put(make_block(11, big_bytes=1000))
        expected = math.ceil(10 / per_segment) + 2
        assert segment_files(directory) == [f"{n:08d}.seg" for n in range(1, expected + 1)]
        assert all(os.path.getsize(directory / "segments" / n) <= 8192 for n in segment_files(directory)[:-2])
        assert tier.disk_bytes == tier.nbytes + (expected - 1) * small + big
    rows = table(directory)["blocks"]
    assert [r["segment"] for r in rows][-2:] == [expected - 1, expected]
    assert all(r["offset"] % 8 == 0 and r["version"] == 2 for r in rows)


def test_a_full_log_refuses_a_put_until_blocks_are_dropped(tmp_path):
    directory = tmp_path / "s"
    record = record_size(tmp_path, 1000)
    with DiskLog(directory, max_bytes=5 * record, segment_bytes=3 * record) as tier:
        for i in range(5):
            tier.put(make_block(i, big_bytes=1000))
        assert tier.nbytes == 5 * record and tier.overflow() == 0 and tier.overflow(record) == record
        on_disk = tier.disk_bytes
        with pytest.raises(DiskBudgetError, match="drop blocks first") as e:
            tier.put(make_block(5, big_bytes=1000))
        _one_line(e)
        assert tier.ids() == list(range(5)) and tier.disk_bytes == on_disk  # nothing written
        with pytest.raises(InvalidBlockError, match="budget"):
            tier.put(make_block(99, big_bytes=10 * record))
        assert tier.ids() == list(range(5))  # a refused put drops nothing
        tier.drop(0)
        tier.put(make_block(5, big_bytes=1000))
        assert tier.ids() == [1, 2, 3, 4, 5] and tier.nbytes == 5 * record
    # A smaller budget on reopen keeps every block (its owner's policy chooses what
    # leaves, ``test_the_disk_budget_drops_blocks_by_policy``) and refuses puts meanwhile.
    with DiskLog.open(directory, max_bytes=2 * record) as tier:
        assert tier.ids() == [1, 2, 3, 4, 5] and tier.overflow() == 3 * record and tier.recovery.clean
        with pytest.raises(DiskBudgetError):
            tier.put(make_block(6, big_bytes=1000))


def disk_store(directory: Path, budget: int | None, segment: int, policy: str = "age") -> TieredStore:
    """A store whose blocks all go down to one disk tier (a device tier of 0 bytes)."""
    log = DiskLog(directory, max_bytes=budget, segment_bytes=segment, flush_every=None, flush_seconds=None)
    tiers = [DeviceTier(0), DiskTier(log, IdentityCodec())]
    return TieredStore(tiers, get_policy(policy), device=torch.device("cpu"), dtype=torch.float32)


def kv_block(block_id: int, tokens: int = 16) -> Block:
    return random_block(block_id, tokens, layers=2, heads=2, dim=8)


def block_record_size(tmp_path: Path) -> int:
    """Bytes one ``kv_block`` takes in a segment, its layout record left out."""
    store = disk_store(tmp_path / "probe-kv", None, 1 << 20)
    store.put(kv_block(0))
    nbytes = store.bytes_per_tier()["disk"]
    store.close()
    return nbytes


def room_for(blocks: int, record: int) -> int:
    """Bytes that hold ``blocks`` records of about ``record`` bytes and not one more: records
    of blocks of one shape differ by a few bytes (their metadata values), never by half."""
    return blocks * record + record // 2


def test_the_disk_budget_drops_blocks_by_policy_and_deletes_emptied_segments(tmp_path):
    directory = tmp_path / "s"
    record = block_record_size(tmp_path)
    layout = layout_size(IdentityCodec().encode(kv_block(0)))
    budget, segment = room_for(5, record), layout + room_for(3, record)
    store = disk_store(directory, budget, segment)  # policy "age": oldest first
    disk = store.tiers[1].log
    gone_all = []
    for i in range(20):
        gone = store.put(kv_block(i))
        gone_all += gone
        assert disk.nbytes <= budget
        assert gone == ([i - 5] if i >= 5 else [])  # oldest first, one for one
        store.flush()  # so table.json tells which segments hold live blocks
        live_segments = {r["segment"] for r in table(directory)["blocks"]}
        assert {int(n[:8]) for n in segment_files(directory)} == live_segments
        assert disk.disk_bytes - disk.nbytes < segment
    assert disk.ids() == list(range(15, 20)) and [m.id for m in store.metas()] == list(range(15, 20))
    assert gone_all == list(range(15))
    # records differ by their metadata values ("[14,14.0,14.5,2,2]"): at most 8 bytes here
    assert store.dropped_blocks == 15 and abs(store.dropped_bytes - 15 * record) <= 15 * 8
    assert len(segment_files(directory)) == 2  # blocks 15..17 and 18..19
    with pytest.raises(KeyError):
        store.get([3])
    with pytest.raises(InvalidBlockError, match="budget"):
        store.put(kv_block(99, tokens=160))
    assert disk.ids() == list(range(15, 20)) and len(store) == 5  # a refused put drops nothing
    store.close()
    # A smaller budget on reopen is enforced at once, when the store adopts the blocks.
    resumed = TieredStore(
        [DeviceTier(0), DiskTier(DiskLog.open(directory, max_bytes=room_for(2, record)), IdentityCodec())],
        get_policy("age"),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert resumed.adopt() == [15, 16, 17]
    assert resumed.tiers[1].log.ids() == [18, 19] and [m.id for m in resumed.metas()] == [18, 19]
    assert segment_files(directory) == ["00000007.seg"]
    resumed.close()


@pytest.mark.parametrize("policy, kept", [("lru", [0, 4, 5]), ("age", [3, 4, 5])])
def test_lru_eviction_applies_to_the_disk_tier_within_its_budget(tmp_path, policy, kept):
    record = block_record_size(tmp_path)
    store = disk_store(tmp_path / "s", room_for(3, record), 1 << 20, policy)
    disk = store.tiers[1].log
    gone_all = []
    for i in range(6):
        if i in (3, 5) and 0 in {m.id for m in store.metas()}:
            store.get([0])  # block 0 retrieved while held: the most recently used
        gone_all += store.put(kv_block(i))
        assert disk.nbytes <= room_for(3, record)
    assert disk.ids() == kept and [m.id for m in store.metas()] == kept
    assert sorted(gone_all) == sorted(set(range(6)) - set(kept))
    for (block, tier), i in zip(store.get(kept), kept, strict=True):
        assert tier == "disk" and all(
            torch.equal(k, ek) and torch.equal(v, ev)
            for (k, v), (ek, ev) in zip(block.layers, kv_block(i).layers, strict=True)
        )
    store.close()


def two_records_a_segment(tmp_path: Path, big_bytes: int) -> int:
    """``segment_bytes`` for two ``make_block(_, big_bytes)`` a segment, with their layout."""
    return layout_size(make_block(0, big_bytes)) + room_for(2, record_size(tmp_path, big_bytes))


def test_drop_frees_a_segment_once_all_its_blocks_are_gone(tmp_path):
    directory = tmp_path / "s"
    with DiskLog(directory, segment_bytes=two_records_a_segment(tmp_path, 1500)) as tier:
        for i in range(4):
            tier.put(make_block(i, big_bytes=1500))  # two records per segment
        assert len(segment_files(directory)) == 2
        tier.drop(1)
        assert len(segment_files(directory)) == 2 and 1 not in tier
        tier.drop(0)
        assert segment_files(directory) == ["00000002.seg"]
        with pytest.raises(BlockNotFoundError, match="block 0 is not in the disk tier"):
            tier.drop(0)
        tier.drop(2)
        tier.drop(3)  # the segment being appended to
        assert segment_files(directory) == [] and len(tier) == 0 and tier.nbytes == 0
        tier.put(make_block(4, big_bytes=1500))
    with DiskLog.open(directory) as tier:
        assert tier.ids() == [4] and tier.recovery.clean
        assert_same_block(tier.get(4), make_block(4, 1500))


def test_a_segment_whose_deletion_was_interrupted_is_removed_on_open(tmp_path):
    directory = tmp_path / "s"
    with DiskLog(directory, segment_bytes=two_records_a_segment(tmp_path, 1500)) as tier:
        for i in range(4):
            tier.put(make_block(i, big_bytes=1500))
        first = directory / "segments" / "00000001.seg"
        saved = first.read_bytes()
        tier.drop(0)
        tier.drop(1)  # the table is rewritten without segment 1, then the file is deleted
    first.write_bytes(saved)  # as if the process died between the two
    with DiskLog.open(directory) as tier:
        assert tier.ids() == [2, 3] and tier.recovery.removed_segments == ["00000001.seg"]
        assert segment_files(directory) == ["00000002.seg"]


def test_put_batches_flushes(tmp_path):
    directory = tmp_path / "s"
    with DiskLog(directory, flush_every=3, flush_seconds=None) as tier:
        assert table(directory)["blocks"] == []  # an empty table exists from the start
        for i in range(5):
            tier.put(make_block(i))
        assert [r["id"] for r in table(directory)["blocks"]] == [0, 1, 2]
        tier.flush()
        assert [r["id"] for r in table(directory)["blocks"]] == [0, 1, 2, 3, 4]


# --- checksums and damage -------------------------------------------------------------------


def _flip_byte(directory: Path, block_id: int, into_payload: int) -> None:
    row = next(r for r in table(directory)["blocks"] if r["id"] == block_id)
    path = directory / "segments" / f"{row['segment']:08d}.seg"
    with open(path, "r+b") as f:
        f.seek(row["offset"] + HEADER_SIZE + into_payload)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_flipped_byte_is_never_returned_as_data(tmp_path):
    directory = tmp_path / "s"
    tier = DiskLog(directory)
    for i in range(4):
        tier.put(make_block(i, big_bytes=4096))
    tier.flush()
    _flip_byte(directory, 2, into_payload=3000)  # inside a tensor, while the tier is open
    with pytest.raises(CorruptBlockError, match="block 2 .* is corrupt: its payload does not match") as e:
        tier.get(2)
    assert e.value.block_id == 2 and tier.corrupt == {2}
    with pytest.raises(CorruptBlockError):
        tier.get_many([1, 2, 3])
    got = tier.get_many([1, 2, 3], skip_corrupt=True)
    assert [b.id for b in got] == [1, 3]
    for b in got:
        assert_same_block(b, make_block(b.id, 4096))
    assert tier.verify() == [2]
    tier.close()
    with DiskLog.open(directory) as tier:
        assert tier.verify() == [2] and tier.corrupt == {2}
        assert [b.id for b in tier.get_many(tier.ids(), skip_corrupt=True)] == [0, 1, 3]
        tier.drop(2)  # what a policy would do with it
        assert tier.verify() == [] and tier.corrupt == set()


def test_flipped_byte_in_the_metadata_is_caught_too(tmp_path):
    directory = tmp_path / "s"
    with DiskLog(directory) as tier:
        tier.put(make_block(0))
        tier.put(make_block(1))
        tier.flush()
        _flip_byte(directory, 1, into_payload=10)  # inside the JSON directory
        assert tier.verify() == [1]
        assert_same_block(tier.get(0), make_block(0))


def _crash_copy(tier: DiskLog, directory: Path, old_table: bytes) -> None:
    """Leave ``directory`` as a crash before the last flush would: the older table, all records."""
    tier.close()
    (directory / "table.json").write_bytes(old_table)


def test_unflushed_records_are_recovered_and_a_torn_tail_is_cut(tmp_path):
    directory = tmp_path / "s"
    tier = DiskLog(directory, flush_every=None, flush_seconds=None)
    for i in range(3):
        tier.put(make_block(i, big_bytes=5000))
    tier.flush()
    old_table = (directory / "table.json").read_bytes()
    tier.put(make_block(3, big_bytes=5000))
    segment = directory / "segments" / "00000001.seg"
    end = os.path.getsize(segment)  # every put hands its record to the OS
    tier.put(make_block(4, big_bytes=5000))
    record = os.path.getsize(segment) - end
    _crash_copy(tier, directory, old_table)
    os.truncate(segment, end + 1000)  # block 4 was cut short mid-record
    with DiskLog.open(directory) as tier:
        rep = tier.recovery
        assert tier.ids() == [0, 1, 2, 3] and rep.recovered == [3]
        assert [(t.segment, t.offset, t.nbytes) for t in rep.torn] == [("00000001.seg", end, 1000)]
        assert rep.table_error is None and rep.damaged == [] and tier.verify() == []
        assert os.path.getsize(segment) == end  # the torn bytes are gone
        assert_same_block(tier.get(3), make_block(3, 5000))
        tier.put(make_block(4, big_bytes=5000))  # a new put lands right after block 3
        # with its layout again: a reopened log does not know the layouts written before
        assert os.path.getsize(segment) == end + record + layout_size(make_block(4, 5000))
    with DiskLog.open(directory) as tier:
        assert tier.recovery.clean and tier.ids() == [0, 1, 2, 3, 4]
        assert_same_block(tier.get(4), make_block(4, 5000))


def test_a_damaged_unflushed_record_is_skipped_not_the_ones_after(tmp_path):
    directory = tmp_path / "s"
    tier = DiskLog(directory, flush_every=None, flush_seconds=None)
    tier.put(make_block(0, big_bytes=5000))
    tier.flush()
    old_table = (directory / "table.json").read_bytes()
    for i in (1, 2, 3):
        tier.put(make_block(i, big_bytes=5000))
    tier.flush()
    _flip_byte(directory, 2, into_payload=2000)
    row = next(r for r in table(directory)["blocks"] if r["id"] == 2)
    record = tier.nbytes // 4
    _crash_copy(tier, directory, old_table)
    with DiskLog.open(directory) as tier:
        rep = tier.recovery
        assert tier.ids() == [0, 1, 3] and rep.recovered == [1, 3]
        assert [(t.offset, t.nbytes) for t in rep.damaged] == [(row["offset"], record)] and rep.torn == []
        assert tier.verify() == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_damaged_table_is_rebuilt_from_the_segments(tmp_path, damage):
    directory = tmp_path / "s"
    with DiskLog(directory, segment_bytes=8192) as tier:
        for i in range(6):
            tier.put(make_block(i, big_bytes=2000))
        nbytes = tier.nbytes
    path = directory / "table.json"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    else:
        path.unlink()
    with DiskLog.open(directory) as tier:
        assert tier.recovery.table_rebuilt and "table.json" in tier.recovery.table_error
        assert tier.ids() == list(range(6)) and tier.nbytes == nbytes
        for i in range(6):
            assert_same_block(tier.get(i), make_block(i, 2000))
    with DiskLog.open(directory) as tier:  # the rebuilt table was written back
        assert tier.recovery.clean and tier.ids() == list(range(6))


# --- errors -----------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, StreamVLMError)
    return message


def test_a_directory_is_used_by_one_tier_at_a_time(tmp_path):
    directory = tmp_path / "s"
    tier = DiskLog(directory)
    with pytest.raises(DiskTierLockedError) as e:
        DiskLog(directory)
    assert f"already open in process {os.getpid()}" in _one_line(e)
    tier.close()
    DiskLog.open(directory).close()  # closing released it


def test_clear_errors(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(NotASessionDirError) as e:
        DiskLog(tmp_path / "photos")
    assert "not a streamvlm disk-tier session directory" in _one_line(e)
    with pytest.raises(NotASessionDirError):
        DiskLog.open(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DirectoryNotWritableError) as e:
        DiskLog(tmp_path / "file" / "s")
    _one_line(e)

    directory = tmp_path / "s"
    DiskLog(directory).close()
    marker = directory / "streamvlm-disk.json"
    marker.write_text(json.dumps({"format": "streamvlm-disk-tier", "version": 3}))
    with pytest.raises(UnsupportedFormatError) as e:
        DiskLog.open(directory)
    assert "version 3" in _one_line(e)
    marker.write_text(json.dumps({"format": "streamvlm-disk-tier", "version": 2}))

    tier = DiskLog(directory)
    tier.put(make_block(1))
    for bad, match in [
        (StoredBlock({"id": 1}, {}), "already in the disk tier"),
        (StoredBlock({"t": 0}, {}), "int 'id'"),
        (StoredBlock({"id": True}, {}), "int 'id'"),
        (StoredBlock({"id": 2, "when": object()}, {}), "not JSON-serialisable"),
        (StoredBlock({"id": 3}, {"x": [1, 2]}), "torch.Tensor"),
    ]:
        with pytest.raises(InvalidBlockError, match=match) as e:
            tier.put(bad)
        _one_line(e)
    with pytest.raises(BlockNotFoundError) as e:
        tier.get(5)
    assert isinstance(e.value, KeyError) and "block 5" in _one_line(e)
    tier.close()
    with pytest.raises(DiskTierClosedError):
        tier.put(make_block(9))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory(tmp_path):
    directory = tmp_path / "s"
    DiskLog(directory).close()
    directory.chmod(0o500)
    try:
        with pytest.raises(DirectoryNotWritableError):
            DiskLog.open(directory)
    finally:
        directory.chmod(0o700)


# --- crash safety with real SIGKILLs ------------------------------------------------------------


class Zygote:
    """The fork server of disk_tier_crash_child.py, started once (its imports take seconds)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next(self, timeout: float = 30.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"crash child is silent; it said: {self.log[-5:]}") from None
        self.log.append(line)
        assert not line.startswith("error"), line
        return line

    def expect(self, word: str) -> list[str]:
        while True:
            fields = self.next().split()
            if fields and fields[0] == word:
                return fields[1:]

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def zygote():
    """Started with this module's first test, so its imports overlap the other tests."""
    z = Zygote()
    yield z
    z.stop()


def _segment_bytes_on_disk(directory: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(directory / "segments"))
    except FileNotFoundError:
        return 0


def _kill_when(
    zygote: Zygote, pid: int, directory: Path, mode: str, puts_first: int, rng, seen: dict
) -> None:
    """Let the writer put ``puts_first`` blocks, then SIGKILL it at a point chosen by ``mode``."""
    puts = 0
    while True:
        kind, *rest = zygote.next().split()
        if kind in ("put", "flushed"):
            seen[kind].add(int(rest[0]))
        puts += kind == "put"
        if mode == "after_flush" and kind == "flushed" and puts >= puts_first:
            break
        if mode != "after_flush" and kind == "put" and puts >= puts_first:
            break
    if mode == "mid_record":  # wait until the next record has started to reach the file
        base, deadline = _segment_bytes_on_disk(directory), time.monotonic() + 3
        while _segment_bytes_on_disk(directory) == base and time.monotonic() < deadline:
            pass
    elif mode == "random":
        time.sleep(rng.uniform(0, 0.01))
    os.kill(pid, signal.SIGKILL)


def test_sigkill_mid_write_loses_nothing_that_was_put(tmp_path, zygote):
    directory = tmp_path / "s"
    mb = 1 << 20
    big, segment, flush_every = 4 * mb, 13 * mb, 3  # 3 records per segment: kills hit rollovers too
    rng = random.Random(1)
    seen = {"put": set(), "flushed": set()}
    checked: set[int] = set()
    torn_kills = 0
    zygote.expect("ready")
    modes = ["mid_record", "after_flush", "mid_record", "random", "after_put", "mid_record"]
    for round_, mode in enumerate(modes):
        zygote.send(f"run {directory} {big} {segment} {flush_every}")
        (pid,) = map(int, zygote.expect("worker"))
        _kill_when(zygote, pid, directory, mode, 1 + round_ % 3, rng, seen)
        while (fields := zygote.next().split())[0] != "exit":  # lines printed before the kill landed
            if fields[0] in seen:
                seen[fields[0]].add(int(fields[1]))
        status = int(fields[2])
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

        on_disk = _segment_bytes_on_disk(directory)
        with DiskLog.open(directory, segment_bytes=segment) as tier:
            rep, ids = tier.recovery, tier.ids()
            assert rep.table_error is None and rep.damaged == [] and rep.lost == []
            assert seen["flushed"] <= set(ids)  # durable ones, of course...
            assert seen["put"] <= set(ids)  # ...and every put that returned: a kill keeps the page cache
            assert set(ids) - seen["put"] <= {max(seen["put"]) + 1}  # written, killed before printing
            seen["put"] |= set(ids)
            assert ids == sorted(ids) and tier.verify() == [] and not tier.corrupt
            torn = sum(t.nbytes for t in rep.torn)
            assert torn == on_disk - _segment_bytes_on_disk(directory)  # reported == cut away
            torn_kills += torn > 0
            for block_id in sorted(set(ids) - checked):
                assert_same_block(tier.get(block_id), make_block(block_id, big))
            checked |= set(ids)
            resumed = ids[-1] + 1  # a put after resume works, and the next writer goes on after it
            tier.put(make_block(resumed, big))
            assert_same_block(tier.get(resumed), make_block(resumed, big))
        seen["put"].add(resumed)
        checked.add(resumed)
    assert torn_kills >= 1, "no kill landed mid-record"
    with DiskLog.open(directory) as tier:
        assert tier.recovery.clean and tier.verify() == []
        assert tier.ids() == sorted(checked) and len(segment_files(directory)) >= 2
