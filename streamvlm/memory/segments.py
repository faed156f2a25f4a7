"""The disk tier's record format: one record per block, appended to segment files.

A record is a 64-byte header followed by the payload, padded with zeros to a multiple of
64 bytes. Records start at 64-byte aligned file offsets and so does every tensor inside a
payload, so a tensor viewed through a memory map of the segment (page aligned) is 64-byte
aligned too. All integers are little endian.

    header (64 bytes)
       0  magic         8s  b"SVLMBLK\\0"
       8  version       u16 RECORD_VERSION
      10  header_size   u16 64
      12  flags         u32 0 (reserved)
      16  block_id      i64
      24  payload_len   u64 bytes of payload, without the trailing padding
      32  payload_crc   u32 zlib.crc32 of the payload
      36  header_crc    u32 zlib.crc32 of bytes 0..35: a torn or random header is never trusted
      40  zeros
    payload
       0  dir_len       u32
       4  directory     JSON, utf-8: {"meta": {...}, "tensors": [{"name", "dtype", "shape",
                        "offset", "nbytes"}, ...]}; offsets are relative to the data start
          zeros up to the data start, align(4 + dir_len)
          tensor bytes, each at a 64-aligned offset, zeros between them

The payload carries the block's metadata as well as its tensors, so a segment alone is
enough to rebuild every block in it (the table only makes opening fast).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import torch

from .block import StoredBlock

MAGIC = b"SVLMBLK\x00"
RECORD_VERSION = 1
ALIGN = 64
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sHHIqQI")  # everything the header crc covers
_U32 = struct.Struct("<I")


class RecordVersionError(Exception):
    """An intact record written by a format version this code does not read."""

    def __init__(self, version: int) -> None:
        super().__init__(f"record format version {version}")
        self.version = version


def align(n: int) -> int:
    """``n`` rounded up to the record alignment."""
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class RecordHeader:
    version: int
    block_id: int
    payload_len: int
    payload_crc: int

    @property
    def record_len(self) -> int:
        """Bytes the whole record takes in the segment, padding included."""
        return HEADER_SIZE + align(self.payload_len)


@dataclass(frozen=True)
class EncodedRecord:
    """A block ready to append: write ``pieces`` in order, ``header.record_len`` bytes in all."""

    header: RecordHeader
    pieces: list
    meta: dict  # the metadata as it will read back (after a JSON round trip)


# --- encoding ---------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _raw_bytes(block_id: int, name: str, tensor: torch.Tensor):
    """The tensor's bytes as a uint8 numpy array (no copy when already CPU and contiguous)."""
    if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
        raise ValueError(
            f"block {block_id}: tensors must map names to torch.Tensor, got {name!r}: {type(tensor)}"
        )
    try:
        flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        # Viewing as uint8 keeps bfloat16 / float8, which numpy cannot represent, byte exact.
        return flat.view(torch.uint8).numpy()
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"block {block_id}: tensor {name!r} ({tensor.dtype}, {tensor.layout}) cannot be stored "
            f"as raw bytes: {e}"
        ) from None


def _meta_json(meta) -> dict:
    """The metadata as it will read back; checks it is a JSON object with an int id."""
    block_id = meta.get("id") if isinstance(meta, dict) else None
    # bool is an int subclass: an id of True would silently collide with block 1.
    if not isinstance(block_id, int) or isinstance(block_id, bool):
        raise ValueError(f"block meta must be a dict with an int 'id', got {meta!r:.80}")
    if not -(2**63) <= block_id < 2**63:
        raise ValueError(f"block id {block_id} does not fit in 64 bits")
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as e:
        raise ValueError(f"block {block_id}: meta is not JSON-serialisable: {e}") from None


def _pack_header(header: RecordHeader) -> bytes:
    body = _HEADER.pack(
        MAGIC, header.version, HEADER_SIZE, 0, header.block_id, header.payload_len, header.payload_crc
    )
    return body + _U32.pack(zlib.crc32(body)) + bytes(HEADER_SIZE - len(body) - _U32.size)


def encode_record(block: StoredBlock) -> EncodedRecord:
    """Lay a block out as a record. Raises ValueError if it cannot be stored."""
    meta = _meta_json(block.meta)
    if not isinstance(block.tensors, dict):
        raise ValueError(f"block {meta['id']}: tensors must be a dict, got {type(block.tensors).__name__}")
    entries, data, offset = [], [], 0
    for name, tensor in block.tensors.items():
        raw = _raw_bytes(meta["id"], name, tensor)
        start = align(offset)
        if start > offset:
            data.append(bytes(start - offset))
        data.append(raw)
        entries.append(
            {
                "name": name,
                "dtype": dtype_name(tensor.dtype),
                "shape": list(tensor.shape),
                "offset": start,
                "nbytes": raw.nbytes,
            }
        )
        offset = start + raw.nbytes
    directory = json.dumps({"meta": meta, "tensors": entries}, separators=(",", ":")).encode()
    head = _U32.pack(len(directory)) + directory
    payload = [head, bytes(align(len(head)) - len(head)), *data]
    crc, length = 0, 0
    for piece in payload:
        crc = zlib.crc32(piece, crc)
        length += memoryview(piece).nbytes
    header = RecordHeader(RECORD_VERSION, meta["id"], length, crc)
    tail = bytes(align(length) - length)
    return EncodedRecord(header, [_pack_header(header), *payload, tail], meta)


# --- decoding ---------------------------------------------------------------------------


def parse_header(buf, offset: int) -> RecordHeader | None:
    """The record header at ``offset``, or None if there is no intact header there."""
    if offset < 0 or offset + HEADER_SIZE > len(buf):
        return None
    fields = _HEADER.unpack_from(buf, offset)
    (header_crc,) = _U32.unpack_from(buf, offset + _HEADER.size)
    magic, version, header_size, _flags, block_id, payload_len, payload_crc = fields
    if magic != MAGIC or header_size != HEADER_SIZE:
        return None
    if zlib.crc32(buf[offset : offset + _HEADER.size]) != header_crc:
        return None
    return RecordHeader(version, block_id, payload_len, payload_crc)


def payload_crc(buf, offset: int, payload_len: int) -> int:
    """crc32 of the payload of the record at ``offset`` (computed over the map, no copy)."""
    start = offset + HEADER_SIZE
    with memoryview(buf) as view, view[start : start + payload_len] as payload:
        return zlib.crc32(payload)


def _tensor(buf, offset: int, entry: dict) -> torch.Tensor:
    dtype = dtype_from_name(entry["dtype"])
    shape = tuple(int(n) for n in entry["shape"])
    count = math.prod(shape)
    if count * dtype.itemsize != entry["nbytes"]:
        raise ValueError(f"tensor {entry['name']!r}: {entry['nbytes']} bytes do not fit {shape} {dtype}")
    if count == 0:
        return torch.empty(shape, dtype=dtype)  # frombuffer refuses empty views
    # A view of the buffer: the tensor holds a reference to it, so the map outlives the tensor.
    return torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).view(shape)


def read_directory(buf, offset: int, payload_len: int) -> tuple[dict, int]:
    """The payload directory of the record at ``offset`` and the file offset of its tensor data.

    Check the payload crc first: this trusts what it reads. Raises ValueError, KeyError or
    TypeError on a payload that does not parse.
    """
    start = offset + HEADER_SIZE
    (dir_len,) = _U32.unpack_from(buf, start)
    if 4 + dir_len > payload_len:
        raise ValueError("directory runs past the payload")
    directory = json.loads(bytes(buf[start + 4 : start + 4 + dir_len]))
    if not isinstance(directory["meta"], dict) or not isinstance(directory["tensors"], list):
        raise TypeError("malformed directory")
    return directory, start + align(4 + dir_len)


def decode_payload(buf, offset: int, payload_len: int) -> StoredBlock:
    """The block in the record at ``offset``; its tensors are views of ``buf`` (see ``read_directory``)."""
    directory, data = read_directory(buf, offset, payload_len)
    data_len = offset + HEADER_SIZE + payload_len - data
    tensors = {}
    for entry in directory["tensors"]:
        if entry["offset"] + entry["nbytes"] > data_len:
            raise ValueError(f"tensor {entry['name']!r} runs past the payload")
        tensors[entry["name"]] = _tensor(buf, data + entry["offset"], entry)
    return StoredBlock(meta=directory["meta"], tensors=tensors)


# --- scanning (recovery) ----------------------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    """What a scan of one segment found from its start offset on."""

    records: list[tuple[int, RecordHeader]]  # (offset, header) of every intact record
    end: int  # end of the last intact record: where appending may resume
    torn: int  # bytes after ``end`` holding no intact record (a write cut short)
    damaged: list[tuple[int, int]]  # (offset, length) of unreadable spans followed by intact records


def intact_header(buf, offset: int, size: int) -> RecordHeader | None:
    """The header at ``offset`` if the whole record is there and its payload checks out.

    Raises ``RecordVersionError`` for an intact header of another format version.
    """
    header = parse_header(buf, offset)
    if header is None or offset + header.record_len > size:
        return None
    if header.version != RECORD_VERSION:
        raise RecordVersionError(header.version)
    if payload_crc(buf, offset, header.payload_len) != header.payload_crc:
        return None
    return header


def _next_intact(buf, offset: int, size: int) -> int | None:
    """Offset of the next intact record after a damaged one, if any (``buf.find`` is fast C)."""
    while True:
        offset = buf.find(MAGIC, offset, size)
        if offset < 0:
            return None
        if offset % ALIGN == 0 and intact_header(buf, offset, size) is not None:
            return offset
        offset += 1


def scan(buf, start: int, size: int) -> ScanResult:
    """Every intact record in ``buf[start:size]``, skipping damaged spans.

    A damaged span followed by an intact record is reported in ``damaged`` (a record
    corrupted in place); what follows the last intact record is ``torn`` (the tail a crash
    cut short), safe to truncate.
    """
    records, damaged = [], []
    offset = end = start
    while offset < size:
        header = intact_header(buf, offset, size)
        if header is None:
            following = _next_intact(buf, offset + ALIGN, size)
            if following is None:
                break
            damaged.append((offset, following - offset))
            offset = following
            continue
        records.append((offset, header))
        offset = end = offset + header.record_len
    return ScanResult(records, end, size - end, damaged)
