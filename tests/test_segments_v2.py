"""Disk record format 2 (issue 18): one packed buffer per block, layouts written once a
segment, the bytes it costs, and directories of format 1 that still resume."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from _blocks import random_block
from disk_tier_crash_child import make_block
from test_disk_tier import assert_same_block, table

from streamvlm.memory import disk as disk_module
from streamvlm.memory import segments as rec
from streamvlm.memory.block import StoredBlock
from streamvlm.memory.codec import get_block_codec
from streamvlm.memory.disk import CorruptBlockError, DiskLog, UnsupportedFormatError

V1_DIRECTORY = Path(__file__).with_name("data") / "disk_v1"


def segment(directory: Path, number: int = 1) -> Path:
    return directory / "segments" / f"{number:08d}.seg"


# --- the bytes a record costs -------------------------------------------------------------


@pytest.mark.parametrize("codec", ["identity", "kivi2", "vidkv"])
def test_a_tiny_model_block_costs_its_tensors_plus_a_header_and_its_varying_metadata(tmp_path, codec):
    encoder = get_block_codec(codec)
    blocks = [encoder.encode(random_block(i, tokens=16, layers=4, heads=2, dim=32)) for i in range(20)]
    with DiskLog(tmp_path / "s") as log:
        for block in blocks:
            log.put(block)
        overheads = [nbytes - block.nbytes for (_, nbytes), block in zip(log.entries(), blocks, strict=True)]
        # One layout record for the whole stream: the tensor names, dtypes and shapes, once.
        layout = rec.encode_record(blocks[0]).layout_len
        assert log.disk_bytes == log.nbytes + layout
    # A record is the 40-byte header, the tensors packed without gaps, the metadata values
    # ("[19,19.0,19.5,2,4]": 18 bytes) and padding to 8 bytes.
    assert all(rec.HEADER_SIZE < o <= rec.HEADER_SIZE + 18 + rec.ALIGN - 1 for o in overheads), overheads
    if codec == "vidkv":  # 16-token blocks take vidkv's compact layout: 3436 bytes in many small tensors
        assert blocks[0].nbytes == 3436 and len(blocks[0].tensors) == 43
        assert max(overheads) < 0.02 * blocks[0].nbytes


def test_tensors_are_packed_by_alignment_without_gaps_and_read_back_as_aligned_views(tmp_path):
    tensors = {
        "u8": torch.arange(3, dtype=torch.uint8),
        "f64": torch.randn(3, dtype=torch.float64),
        "f16": torch.randn(5).half(),
        "c128": torch.randn(2, dtype=torch.complex128),
        "i32": torch.arange(7, dtype=torch.int32),
        "empty": torch.empty(0, dtype=torch.float32),
    }
    block = StoredBlock({"id": 1, "name": "x"}, tensors)
    record = rec.encode_record(block)
    offsets = {t.name: t.offset for t in record.layout.tensors}
    # By decreasing alignment: float64 and complex128 (8), int32, float16, uint8; no gaps.
    assert [t.name for t in record.layout.tensors] == list(tensors)  # the block's order is kept
    assert offsets["f64"] == 0 and offsets["c128"] == 24 and offsets["i32"] == 56
    assert offsets["f16"] == 84 and offsets["u8"] == 94 and record.layout.data_len == 97
    with DiskLog(tmp_path / "s") as log:
        log.put(block)
        got = log.get(1)
        assert_same_block(got, block)
        # aligned for its dtype: to its item size, at most 8 (complex128's C alignment)
        assert all(t.data_ptr() % min(t.element_size(), 8) == 0 for t in got.tensors.values() if t.numel())


def test_metadata_reads_back_whole_and_each_block_owns_its_copy(tmp_path):
    def meta(i):
        return {"id": i, "t": i / 3, "codec": "vidkv", "kv_shape": [2, 16, 32], "flags": {"a": [True, None]}}

    with DiskLog(tmp_path / "s") as log:
        for i in range(3):
            log.put(StoredBlock(meta(i), {"x": torch.zeros(4)}))
        got = log.get_many([0, 1, 2])
        assert [b.meta for b in got] == [meta(i) for i in range(3)]
        got[0].meta["kv_shape"][1] = 4  # the layout's shared list is not this block's
        assert log.get(1).meta == meta(1) and log.meta(2) == meta(2)
    with DiskLog.open(tmp_path / "s") as log:
        assert [log.get(i).meta for i in range(3)] == [meta(i) for i in range(3)]


# --- layouts --------------------------------------------------------------------------------


def layout_offsets(path: Path) -> list[int]:
    with open(path, "rb") as f:
        buf = f.read()
    found = rec.scan(buf, 0, len(buf))
    assert found.torn == 0 and found.damaged == []
    return [offset for offset, header in found.records if header.is_layout]


def pruned_block(block_id: int, tokens: int) -> StoredBlock:
    return get_block_codec("identity").encode(random_block(block_id, tokens, layers=2, heads=2, dim=8))


def test_each_layout_is_written_once_a_segment_and_a_new_segment_writes_it_again(tmp_path):
    directory = tmp_path / "s"
    tokens = [4, 7, 4, 4, 7, 9, 4]  # pruned blocks: one layout per token count
    with DiskLog(directory, segment_bytes=1 << 20) as log:
        for i, n in enumerate(tokens):
            log.put(pruned_block(i, n))
        assert len(layout_offsets(segment(directory))) == 3
        log.flush()
        rows = {r["id"]: r for r in table(directory)["blocks"]}
        assert rows[0]["layout"] == rows[2]["layout"] == rows[6]["layout"] != rows[1]["layout"]
    with DiskLog.open(directory, segment_bytes=1 << 20) as log:  # a reopened log does not know them
        log.put(pruned_block(7, 4))
        assert len(layout_offsets(segment(directory))) == 4
        log.put(pruned_block(8, 4))
        assert len(layout_offsets(segment(directory))) == 4
        for i, n in enumerate([*tokens, 4, 4]):
            assert_same_block(log.get(i), pruned_block(i, n))


def span_of_three(monkeypatch) -> None:
    """Make a layout record serve the three blocks of ``pruned_block(_, 4)`` that follow it."""
    encoded = rec.encode_record(pruned_block(0, 4))
    monkeypatch.setattr(disk_module, "LAYOUT_SPAN_BYTES", encoded.layout_len + 2 * encoded.header.record_len)


def test_a_layout_is_written_again_once_it_lies_more_than_a_span_back(tmp_path, monkeypatch):
    span_of_three(monkeypatch)
    directory = tmp_path / "s"
    with DiskLog(directory) as log:
        for i in range(9):
            log.put(pruned_block(i, 4))
        assert len(layout_offsets(segment(directory))) == 3  # before blocks 0, 3 and 6
        for i in range(9):
            assert_same_block(log.get(i), pruned_block(i, 4))


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_damaged_layout_record_takes_down_only_the_blocks_that_use_it(tmp_path, monkeypatch):
    span_of_three(monkeypatch)
    directory = tmp_path / "s"
    log = DiskLog(directory)
    for i in range(6):
        log.put(pruned_block(i, 4))  # layouts before blocks 0 and 3
    first, second = layout_offsets(segment(directory))
    flip(segment(directory), first + rec.HEADER_SIZE + 10)
    with pytest.raises(CorruptBlockError, match="block 1 .* its layout record at offset 0 is damaged"):
        log.get(1)
    assert log.verify() == [0, 1, 2]
    assert_same_block(log.get(4), pruned_block(4, 4))
    log.close()
    (directory / "table.json").unlink()  # rebuilt from the segment: the three are never data
    with DiskLog.open(directory) as log:
        assert log.ids() == [3, 4, 5] and log.recovery.table_rebuilt
        damaged = [(t.offset, t.nbytes) for t in log.recovery.damaged]
        assert damaged[0][0] == first and len(damaged) == 4  # the layout record, then its 3 blocks
        assert all(log.get(i).id == i for i in (3, 4, 5))
        assert [r["layout"] for r in table(directory)["blocks"]] == [second] * 3


# --- versions ---------------------------------------------------------------------------------


def test_a_directory_written_by_the_previous_release_resumes(tmp_path):
    """tests/data/disk_v1 was written by the release before issue 18 (record format 1): its
    table lists blocks 0 and 1, block 2 is in the segment past the table (an unflushed put)."""
    directory = tmp_path / "s"
    shutil.copytree(V1_DIRECTORY, directory)
    assert json.loads((directory / "streamvlm-disk.json").read_text())["version"] == 1
    v1_end = os.path.getsize(segment(directory))
    with DiskLog.open(directory) as log:
        assert log.ids() == [0, 1, 2] and log.recovery.recovered == [2] and log.verify() == []
        for i in range(3):
            assert_same_block(log.get(i), make_block(i))
        log.put(make_block(3))  # format 2, appended to the same segment
        assert_same_block(log.get(3), make_block(3))
    # An older release must refuse the directory now (it would take format 2 for damage).
    assert json.loads((directory / "streamvlm-disk.json").read_text())["version"] == 2
    assert [r.get("version") for r in table(directory)["blocks"]] == [1, 1, 1, 2]
    assert table(directory)["blocks"][3]["offset"] >= v1_end
    with DiskLog.open(directory) as log:
        assert log.recovery.clean and log.ids() == [0, 1, 2, 3]
        assert [log.get(i).meta for i in range(4)] == [make_block(i).meta for i in range(4)]
    (directory / "table.json").unlink()  # a scan reads both formats in one segment
    with DiskLog.open(directory) as log:
        assert log.recovery.table_rebuilt and log.ids() == [0, 1, 2, 3] and log.recovery.damaged == []
        for i in range(4):
            assert_same_block(log.get(i), make_block(i))


def test_a_record_of_a_newer_version_is_refused_not_taken_for_damage(tmp_path):
    directory = tmp_path / "s"
    with DiskLog(directory) as log:
        log.put(make_block(0))
    path = segment(directory)
    data = bytearray(path.read_bytes())
    # As a version 3 would write it: bytes 0..15 kept, the header's crc in its last 4 bytes.
    struct.pack_into("<H", data, 8, 3)
    struct.pack_into("<I", data, rec.HEADER_SIZE - 4, zlib.crc32(data[: rec.HEADER_SIZE - 4]))
    path.write_bytes(bytes(data))
    (directory / "table.json").unlink()
    with pytest.raises(UnsupportedFormatError, match="format version 3; .* upgrade streamvlm"):
        DiskLog.open(directory)
