"""The disk tier's record format: one record per block, appended to segment files.

A segment is a sequence of records, each a fixed header followed by its payload. Two
kinds of record (format version 2, written since issue 18):

* a **layout record** describes how block payloads are laid out: the name, dtype, shape and
  offset of every tensor, and the block metadata's keys with the values that repeat from
  block to block. A stream's blocks share a few layouts (one per token count), so a
  layout is written once in a segment and the blocks after it point to it;
* a **block record** holds one block: its tensors packed into one contiguous byte buffer,
  followed by the metadata values that vary from block to block (a JSON array), and
  nothing else. Its header gives the distance back to its layout record, earlier in the
  same segment.

Records start at 8-byte aligned offsets (padding zeros follow each record), and every
tensor is packed at an offset aligned to its item size (at most 8, the header's size being
a multiple of 8), so a tensor viewed through a memory map of the segment (page aligned) is
aligned for its dtype. Tensors are packed by decreasing alignment, so there is no padding
between them. All integers are little endian.

    header (40 bytes)
       0  magic         8s  b"SVLMBLK\\0"
       8  version       u16 2
      10  header_size   u16 40
      12  flags         u32 1 for a layout record, 0 for a block record
      16  block_id      i64 (0 in a layout record)
      24  payload_len   u32 bytes of payload, without the trailing padding (a record holds < 4 GiB)
      28  payload_crc   u32 zlib.crc32 of the payload
      32  layout_back   u32 bytes from the block's layout record to this record (0 in a layout record)
      36  header_crc    u32 zlib.crc32 of bytes 0..35: a torn or random header is never trusted
    block payload
       0  tensor bytes  as the layout places them (``data_len`` bytes)
          meta values   JSON array, utf-8: the values of the layout's per-block keys, in order
    layout payload      zlib-compressed (names and shapes repeat from layer to layer)
          JSON, utf-8   {"tensors": [[name, dtype, shape, offset], ...], "data_len": n,
                         "meta": [[key], [key, value], ...]}: ``[key]`` takes its value from
                         the block record, ``[key, value]`` is the same in every block

Numbers in the metadata (id, times, counts) are stored in the block record; every other
value (names, shapes, nested objects) in the layout. The split only decides where bytes
go: any metadata reads back as written.

A block's metadata and tensors are in its segment (its record and its layout record), so
a segment alone is enough to rebuild every block in it (the table only makes opening fast).
Future versions keep bytes 0..11 (magic, version, header_size) and end their header with
its crc, so a reader can tell an intact header of a newer version from damage
(``RecordVersionError``).

Version 1 (written before issue 18) is still read: a 64-byte header (bytes 0..23 as above,
``payload_len`` u64 at 24, ``payload_crc`` u32 at 32, ``header_crc`` u32 of bytes 0..35 at
36, zeros to 64), and a payload of its own JSON directory
(``u32 dir_len``, ``{"meta": {...}, "tensors": [{"name", "dtype", "shape", "offset",
"nbytes"}, ...]}``) followed by the tensors at 64-aligned offsets; records 64-aligned.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property

import torch

from .block import StoredBlock

MAGIC = b"SVLMBLK\x00"
RECORD_VERSION = 2  # what encode_record writes
READABLE_VERSIONS = (1, 2)
# Record alignment, and the largest tensor alignment: 8 is every dtype's alignment in C
# (complex128's included, as numpy has it), and the header's size is a multiple of it.
ALIGN = 8
HEADER_SIZE = 40
FLAG_LAYOUT = 1
_HEADER = struct.Struct("<8sHHIqIII")  # everything the header crc covers
_PREFIX = struct.Struct("<8sHH")  # what every version keeps: magic, version, header_size
_U32 = struct.Struct("<I")

V1_ALIGN = 64
V1_HEADER_SIZE = 64
_V1_HEADER = struct.Struct("<8sHHIqQI")

# Where a resync after damage looks for a header: the finest alignment any version uses.
SCAN_ALIGN = ALIGN


class RecordVersionError(Exception):
    """An intact record written by a format version this code does not read."""

    def __init__(self, version: int) -> None:
        super().__init__(f"record format version {version}")
        self.version = version


def align(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to`` (the record alignment by default)."""
    return -(-n // to) * to


def header_size(version: int) -> int:
    return V1_HEADER_SIZE if version == 1 else HEADER_SIZE


def record_len(version: int, payload_len: int) -> int:
    """Bytes a record of this version and payload length takes in a segment, padding included."""
    if version == 1:
        return V1_HEADER_SIZE + align(payload_len, V1_ALIGN)
    return align(HEADER_SIZE + payload_len)


@dataclass(frozen=True)
class RecordHeader:
    version: int
    block_id: int
    payload_len: int
    payload_crc: int
    flags: int = 0
    layout: int = 0  # segment offset of a version-2 block record's layout record (0 for a layout)

    @property
    def is_layout(self) -> bool:
        return bool(self.flags & FLAG_LAYOUT)

    @property
    def header_size(self) -> int:
        return header_size(self.version)

    @property
    def record_len(self) -> int:
        """Bytes the whole record takes in the segment, padding included."""
        return record_len(self.version, self.payload_len)


# --- layouts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in a block payload."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the payload start

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Layout:
    """How the payloads of the blocks that share it are laid out (see the module docstring)."""

    encoded: bytes  # the layout record's payload: canonical JSON, also its identity
    tensors: tuple[TensorSlot, ...]  # in the block's order (not the payload's)
    data_len: int  # bytes of packed tensors before the metadata values
    meta: tuple[tuple, ...]  # (key,) from the block record or (key, value) constant

    @classmethod
    def parse(cls, encoded: bytes) -> Layout:
        """Raises ValueError, KeyError or TypeError on a payload that is not a layout."""
        spec = json.loads(encoded)
        tensors = tuple(
            TensorSlot(str(name), dtype_from_name(dtype), tuple(int(n) for n in shape), int(offset))
            for name, dtype, shape, offset in spec["tensors"]
        )
        meta = tuple(tuple(entry) for entry in spec["meta"])
        if not all(len(entry) in (1, 2) and isinstance(entry[0], str) for entry in meta):
            raise TypeError("malformed layout metadata keys")
        layout = cls(bytes(encoded), tensors, int(spec["data_len"]), meta)
        if any(t.offset < 0 or t.offset + t.nbytes > layout.data_len for t in tensors):
            raise ValueError("a tensor runs past the layout's data")
        return layout

    def meta_values(self, meta: dict) -> list:
        """The values a block record stores: those of the keys without a constant."""
        return [meta[entry[0]] for entry in self.meta if len(entry) == 1]

    def join_meta(self, values: list) -> dict:
        """The block's metadata from the values its record stores."""
        if len(values) != sum(len(entry) == 1 for entry in self.meta):
            raise ValueError("metadata values do not match the layout")
        per_block = iter(values)
        # deepcopy: a block's meta is its own, however many blocks share the layout's lists
        return {e[0]: copy.deepcopy(e[1]) if len(e) == 2 else next(per_block) for e in self.meta}


def _varies_per_block(value) -> bool:
    """Numbers (ids, times, counts) differ from block to block; names and shapes repeat."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _make_layout(meta: dict, tensors: list[tuple[str, torch.dtype, tuple[int, ...], int]]) -> Layout:
    """The layout of a block's ``(name, dtype, shape, nbytes)`` tensors: packed by decreasing
    alignment (no padding between them), each at an offset aligned to its item size."""
    offsets, end = {}, 0
    for i in sorted(range(len(tensors)), key=lambda i: -_alignment(tensors[i][1])):
        start = align(end, _alignment(tensors[i][1]))
        offsets[i] = start
        end = start + tensors[i][3]
    meta_keys = [[key] if _varies_per_block(value) else [key, value] for key, value in meta.items()]
    spec = {
        "tensors": [
            [name, dtype_name(dtype), list(shape), offsets[i]]
            for i, (name, dtype, shape, _) in enumerate(tensors)
        ],
        "data_len": end,
        "meta": meta_keys,
    }
    return Layout.parse(json.dumps(spec, separators=(",", ":")).encode())


def _alignment(dtype: torch.dtype) -> int:
    return min(dtype.itemsize, ALIGN)


# --- encoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRecord:
    """A block ready to append: a block record and the layout record it needs.

    ``header.layout`` is 0 until the writer knows where the record and its layout lie in the
    segment: ``pieces(offset, layout)`` gives the bytes of the block record written at
    ``offset`` whose layout record is at ``layout``, ``header.record_len`` in all;
    ``layout_pieces()`` the layout record's, ``layout_len`` bytes (written only where the
    segment does not hold the layout yet).
    """

    header: RecordHeader
    layout: Layout
    payload: list  # the payload's pieces, then the padding
    meta: dict  # the metadata as it will read back (after a JSON round trip)

    def pieces(self, offset: int, layout: int) -> list:
        h = self.header
        header = RecordHeader(h.version, h.block_id, h.payload_len, h.payload_crc, h.flags, layout)
        return [pack_header(header, offset), *self.payload]

    @cached_property
    def _layout_payload(self) -> bytes:
        # compressed only when a segment needs the layout: most blocks reuse one written before
        return zlib.compress(self.layout.encoded)

    @property
    def layout_len(self) -> int:
        return record_len(RECORD_VERSION, len(self._layout_payload))

    def layout_pieces(self) -> list:
        payload = self._layout_payload
        header = RecordHeader(RECORD_VERSION, 0, len(payload), zlib.crc32(payload), FLAG_LAYOUT)
        return [pack_header(header, 0), payload, bytes(self.layout_len - HEADER_SIZE - len(payload))]


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


def pack_header(header: RecordHeader, offset: int) -> bytes:
    """The version-2 header bytes of ``header`` for a record written at segment ``offset``."""
    # A layout lies less than LAYOUT_SPAN_BYTES plus a record back (disk.py): 32 bits hold that.
    back = offset - header.layout if not header.is_layout else 0
    body = _HEADER.pack(
        MAGIC,
        header.version,
        HEADER_SIZE,
        header.flags,
        header.block_id,
        header.payload_len,
        header.payload_crc,
        back,
    )
    return body + _U32.pack(zlib.crc32(body))


def encode_record(block: StoredBlock) -> EncodedRecord:
    """Lay a block out as a record. Raises ValueError if it cannot be stored."""
    meta = _meta_json(block.meta)
    if not isinstance(block.tensors, dict):
        raise ValueError(f"block {meta['id']}: tensors must be a dict, got {type(block.tensors).__name__}")
    raws = {name: _raw_bytes(meta["id"], name, tensor) for name, tensor in block.tensors.items()}
    shapes = [(name, t.dtype, tuple(t.shape), raws[name].nbytes) for name, t in block.tensors.items()]
    layout = _make_layout(meta, shapes)
    data, end = [], 0
    # in payload order; an empty tensor first where it shares its offset with another
    for slot in sorted(layout.tensors, key=lambda t: (t.offset, t.nbytes)):
        if slot.offset > end:
            data.append(bytes(slot.offset - end))
        data.append(raws[slot.name])
        end = slot.offset + slot.nbytes
    values = json.dumps(layout.meta_values(meta), separators=(",", ":")).encode()
    payload = [*data, values]
    crc, length = 0, 0
    for piece in payload:
        crc = zlib.crc32(piece, crc)
        length += memoryview(piece).nbytes
    if length >= 2**32:
        raise ValueError(f"block {meta['id']} takes {length} bytes, more than a record holds (4 GiB)")
    header = RecordHeader(RECORD_VERSION, meta["id"], length, crc)
    padding = bytes(header.record_len - HEADER_SIZE - length)
    return EncodedRecord(header, layout, [*payload, padding], meta)


# --- decoding ---------------------------------------------------------------------------


def parse_header(buf, offset: int) -> RecordHeader | None:
    """The record header at ``offset``, or None if there is no intact header there.

    Raises ``RecordVersionError`` for an intact header of a version this code does not read.
    """
    if offset < 0 or offset + _PREFIX.size > len(buf):
        return None
    magic, version, size = _PREFIX.unpack_from(buf, offset)
    if magic != MAGIC or offset + size > len(buf):
        return None
    if version == 1:
        return _parse_v1_header(buf, offset) if size == V1_HEADER_SIZE else None
    if version == RECORD_VERSION and size == HEADER_SIZE:
        fields = _HEADER.unpack_from(buf, offset)
        if zlib.crc32(buf[offset : offset + _HEADER.size]) != _U32.unpack_from(buf, offset + _HEADER.size)[0]:
            return None
        _magic, version, _size, flags, block_id, payload_len, crc, back = fields
        layout = 0 if flags & FLAG_LAYOUT else offset - back
        return RecordHeader(version, block_id, payload_len, crc, flags, layout)
    # Another version: intact if its crc (the header's last 4 bytes) matches.
    if version > RECORD_VERSION and _PREFIX.size + 4 <= size <= 4096 and size % 8 == 0:
        end = offset + size - 4
        if zlib.crc32(buf[offset:end]) == _U32.unpack_from(buf, end)[0]:
            raise RecordVersionError(version)
    return None


def _parse_v1_header(buf, offset: int) -> RecordHeader | None:
    fields = _V1_HEADER.unpack_from(buf, offset)
    (header_crc,) = _U32.unpack_from(buf, offset + _V1_HEADER.size)
    if zlib.crc32(buf[offset : offset + _V1_HEADER.size]) != header_crc:
        return None
    _magic, version, _size, _flags, block_id, payload_len, payload_crc = fields
    return RecordHeader(version, block_id, payload_len, payload_crc)


def payload_crc(buf, offset: int, payload_len: int, version: int = RECORD_VERSION) -> int:
    """crc32 of the payload of the record at ``offset`` (computed over the map, no copy)."""
    start = offset + header_size(version)
    with memoryview(buf) as view, view[start : start + payload_len] as payload:
        return zlib.crc32(payload)


def _layout_header(buf, offset: int) -> RecordHeader | None:
    """The header of the layout record at ``offset`` if the record is intact, else None."""
    try:
        header = parse_header(buf, offset)
    except RecordVersionError:
        return None
    if header is None or not header.is_layout or header.version == 1:
        return None
    if offset + header.record_len > len(buf):
        return None
    return header if payload_crc(buf, offset, header.payload_len) == header.payload_crc else None


def layout_intact(buf, offset: int) -> bool:
    """Whether an intact layout record is at ``offset`` (both its crcs checked)."""
    return _layout_header(buf, offset) is not None


def read_layout(buf, offset: int) -> Layout:
    """The layout in the layout record at ``offset``, checked against both its crcs.

    Raises ValueError (KeyError, TypeError) if there is no intact layout record there.
    """
    header = _layout_header(buf, offset)
    if header is None:
        raise ValueError(f"no intact layout record at offset {offset}")
    start = offset + HEADER_SIZE
    try:
        encoded = zlib.decompress(buf[start : start + header.payload_len])
    except zlib.error as e:
        raise ValueError(f"the layout record at offset {offset} does not decompress: {e}") from None
    return Layout.parse(encoded)


def _tensor(buf, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)  # frombuffer refuses empty views
    # A view of the buffer: the tensor holds a reference to it, so the map outlives the tensor.
    return torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).view(shape)


def read_meta(buf, offset: int, header: RecordHeader, layout: Layout | None = None) -> dict:
    """The metadata of the block record at ``offset`` (``layout``: its layout, for version 2).

    Check the payload crc first: this trusts what it reads. Raises ValueError, KeyError or
    TypeError on a payload that does not parse.
    """
    if header.version == 1:
        return _read_v1_directory(buf, offset, header.payload_len)[0]["meta"]
    start = offset + HEADER_SIZE
    if layout.data_len > header.payload_len:
        raise ValueError("the layout's tensors run past the payload")
    values = json.loads(bytes(buf[start + layout.data_len : start + header.payload_len]))
    if not isinstance(values, list):
        raise TypeError("malformed metadata values")
    return layout.join_meta(values)


def decode_payload(buf, offset: int, header: RecordHeader, layout: Layout | None = None) -> StoredBlock:
    """The block in the record at ``offset``; its tensors are views of ``buf`` (see ``read_meta``)."""
    if header.version == 1:
        return _decode_v1_payload(buf, offset, header.payload_len)
    meta = read_meta(buf, offset, header, layout)
    start = offset + HEADER_SIZE
    tensors = {t.name: _tensor(buf, start + t.offset, t.dtype, t.shape) for t in layout.tensors}
    return StoredBlock(meta=meta, tensors=tensors)


def _read_v1_directory(buf, offset: int, payload_len: int) -> tuple[dict, int]:
    """A version-1 record's payload directory and the file offset of its tensor data."""
    start = offset + V1_HEADER_SIZE
    (dir_len,) = _U32.unpack_from(buf, start)
    if 4 + dir_len > payload_len:
        raise ValueError("directory runs past the payload")
    directory = json.loads(bytes(buf[start + 4 : start + 4 + dir_len]))
    if not isinstance(directory["meta"], dict) or not isinstance(directory["tensors"], list):
        raise TypeError("malformed directory")
    return directory, start + align(4 + dir_len, V1_ALIGN)


def _decode_v1_payload(buf, offset: int, payload_len: int) -> StoredBlock:
    directory, data = _read_v1_directory(buf, offset, payload_len)
    data_len = offset + V1_HEADER_SIZE + payload_len - data
    tensors = {}
    for entry in directory["tensors"]:
        if entry["offset"] + entry["nbytes"] > data_len:
            raise ValueError(f"tensor {entry['name']!r} runs past the payload")
        dtype = dtype_from_name(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        if math.prod(shape) * dtype.itemsize != entry["nbytes"]:
            raise ValueError(f"tensor {entry['name']!r}: {entry['nbytes']} bytes do not fit {shape} {dtype}")
        tensors[entry["name"]] = _tensor(buf, data + entry["offset"], dtype, shape)
    return StoredBlock(meta=directory["meta"], tensors=tensors)


# --- scanning (recovery) ----------------------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    """What a scan of one segment found from its start offset on."""

    records: list[tuple[int, RecordHeader]]  # (offset, header) of every intact record, layouts included
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
    if payload_crc(buf, offset, header.payload_len, header.version) != header.payload_crc:
        return None
    return header


def _next_intact(buf, offset: int, size: int) -> int | None:
    """Offset of the next intact record after a damaged one, if any (``buf.find`` is fast C)."""
    while True:
        offset = buf.find(MAGIC, offset, size)
        if offset < 0:
            return None
        if offset % SCAN_ALIGN == 0 and intact_header(buf, offset, size) is not None:
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
            following = _next_intact(buf, offset + SCAN_ALIGN, size)
            if following is None:
                break
            damaged.append((offset, following - offset))
            offset = following
            continue
        records.append((offset, header))
        offset = end = offset + header.record_len
    return ScanResult(records, end, size - end, damaged)
