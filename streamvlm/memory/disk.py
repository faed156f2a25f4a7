"""The disk tier's storage: one session's blocks on disk, append-only, read back memory-mapped.

``DiskLog`` is a mechanism: it stores, reads, drops and lists blocks (``StoredBlock``,
codec-agnostic). It never chooses what leaves: a put that would pass ``max_bytes`` is
refused (``DiskBudgetError``) and the caller drops blocks in the order its eviction policy
gives (``disk_tier.DiskTier`` puts a codec in front of it and implements ``Tier``).

A session directory holds::

    streamvlm-disk.json   marker: {"format": "streamvlm-disk-tier", "version": 2}
    lock                  flock()ed by the process that has the tier open; holds its pid
    table.json            block table: per block its segment, offset, length, crc32, meta,
                          record version and layout record offset
    segments/00000001.seg append-only segment files of records (format: ``segments.py``)

Directory format 2 (record format 2: one packed buffer per block, its layout written
once in a segment) replaced format 1 in issue 18. A format-1 directory is read and
resumed: its records stay as they are, new ones are written in format 2, and its marker
says version 2 from then on, so a release that reads only format 1 refuses the directory
instead of mistaking the new records for damage.

Durability rule:

* when ``put`` returns, the record is in the operating system's page cache: a crash of
  the process (even SIGKILL) loses nothing, because reopening scans the segments past
  the table's end and recovers every record whose header and checksum are intact;
* when ``flush`` returns (explicitly, every ``flush_every`` puts, or at the first put
  ``flush_seconds`` after the last flush), everything put so far is fsynced and the table
  rewritten atomically: it survives power loss. A power loss or OS crash can lose the
  blocks put since the last flush (any of them whose record did reach the disk is still
  recovered), never a flushed one;
* a record cut short by a crash (torn tail) is ignored, reported in ``tier.recovery`` and
  truncated away on reopen; a record damaged in place is never returned as data.
* drops become durable at the next flush; a segment file is deleted only after a flushed
  table no longer mentions it. A crash before that flush can bring dropped blocks back, so
  a reopened log may hold more than ``max_bytes`` (``overflow``) until its owner drops
  blocks again; it refuses every put until then.

Space: ``nbytes`` counts the records of the blocks held (header, payload and padding),
which is what ``max_bytes`` bounds. A segment file is deleted once all its blocks are
dropped; with drops by age (oldest first) only the oldest segment is partly dead, so the
bytes on disk exceed ``nbytes`` by less than one segment (or one record bigger than a
segment), plus the layout records: one per distinct layout (tensor names and shapes) in
every ``LAYOUT_SPAN_BYTES`` of a segment, a few KB each, which ``disk_bytes`` counts. Drops in another order (an LRU policy) can leave more dead space: there is no
compaction.

Unix only (``fcntl.flock``, ``mmap``). Truncating a segment file behind an open tier's
back can crash the process with SIGBUS when a mapped tensor is touched.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import logging
import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, StreamVLMError
from . import segments as rec
from .block import StoredBlock

__all__ = [
    "BlockNotFoundError",
    "CorruptBlockError",
    "DirectoryNotWritableError",
    "DiskBudgetError",
    "DiskLog",
    "DiskTierClosedError",
    "DiskTierError",
    "DiskTierLockedError",
    "InvalidBlockError",
    "NotASessionDirError",
    "RecoveryReport",
    "StoredBlock",
    "TornTail",
    "UnsupportedFormatError",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "streamvlm-disk-tier"
FORMAT_VERSION = 2  # what this code writes
READABLE_FORMATS = (1, 2)
MARKER = "streamvlm-disk.json"
TABLE = "table.json"
LOCK = "lock"
SEGMENTS = "segments"
SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 << 20
# A block record reuses a layout record written at most this many bytes before it in its
# segment, else the layout is written again: a layout record damaged in place then takes
# down at most this much of its segment's blocks, at a cost of one layout per span.
LAYOUT_SPAN_BYTES = 16 << 20
_LAYOUT_CACHE = 256  # parsed layouts kept (one per token count and segment, typically)


class DiskTierError(StreamVLMError):
    """Base of the disk tier's errors."""


class CorruptBlockError(DiskTierError):
    """A stored block no longer matches its checksum (or cannot be read); it is never returned."""

    def __init__(self, block_id: int, message: str) -> None:
        super().__init__(message)
        self.block_id = block_id


class BlockNotFoundError(DiskTierError, KeyError):
    """No block with this id is held by the tier."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DiskTierLockedError(DiskTierError):
    """Another live process (or another DiskLog in this one) has the session directory open."""


class NotASessionDirError(DiskTierError):
    """The directory exists but is not a streamvlm disk-tier session directory."""


class UnsupportedFormatError(DiskTierError):
    """The session directory was written by a format version this code does not read."""


class DirectoryNotWritableError(DiskTierError):
    """The session directory cannot be created or written."""


class InvalidBlockError(DiskTierError):
    """A block cannot be stored: bad metadata, a tensor without a byte layout, a duplicate id, too big."""


class DiskBudgetError(DiskTierError):
    """A put would take the log past ``max_bytes``; drop blocks first."""


class DiskTierClosedError(DiskTierError):
    """The tier was used after ``close()``."""


@dataclass(frozen=True)
class TornTail:
    """Bytes of a segment that held no intact record."""

    segment: str
    offset: int
    nbytes: int


@dataclass
class RecoveryReport:
    """What opening a session directory had to repair. Empty after a clean close."""

    table_error: str | None = None  # why the table could not be used (then rebuilt from segments)
    recovered: list[int] = field(default_factory=list)  # ids found in segments past the table's end
    torn: list[TornTail] = field(default_factory=list)  # cut-short tails, truncated away
    damaged: list[TornTail] = field(default_factory=list)  # unreadable spans between intact records
    lost: list[int] = field(default_factory=list)  # ids in the table whose segment file is gone
    removed_segments: list[str] = field(default_factory=list)  # leftovers of an unfinished drop

    @property
    def table_rebuilt(self) -> bool:
        return self.table_error is not None

    @property
    def clean(self) -> bool:
        return not (
            self.table_error
            or self.recovered
            or self.torn
            or self.damaged
            or self.lost
            or self.removed_segments
        )


@dataclass
class _Entry:
    """Where one block's record lives, and its metadata."""

    segment: int
    offset: int
    payload_len: int
    crc: int
    meta: dict
    version: int = rec.RECORD_VERSION  # of the record format
    layout: int = 0  # segment offset of the record's layout record (version 2)

    @property
    def header(self) -> rec.RecordHeader:
        return rec.RecordHeader(self.version, self.meta["id"], self.payload_len, self.crc, 0, self.layout)

    @property
    def nbytes(self) -> int:
        return rec.record_len(self.version, self.payload_len)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


def _segment_name(number: int) -> str:
    return f"{number:08d}{SEGMENT_SUFFIX}"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created, renamed, deleted in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves either the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DiskLog:
    """One session's blocks on disk: append-only segments, a block table, memory-mapped reads.

    ``DiskLog(directory)`` creates the session directory (or an empty one) or reopens an
    existing one; ``DiskLog.open(directory)`` only reopens. Reopening restores every block
    of the table plus every intact record appended after it; see ``recovery``.

    Args:
        directory: the session directory.
        max_bytes: budget on ``nbytes``; a ``put`` that would pass it is refused (the
            caller drops blocks first, in its policy's order). ``None``: unbounded.
        segment_bytes: a new segment file starts when a record would take the current one
            past this size (a bigger record gets a segment of its own).
        flush_every: flush after this many puts (``None``: never automatically).
        flush_seconds: flush at the first put this long after the last flush (``None``: off).
        verify_reads: check the payload checksum on every ``get`` (reads the whole payload
            once; about 3 GB/s). Off, corruption is only found by ``verify``.

    Blocks are kept in the order they were put ("oldest first"); block ids must be unique.
    Thread-safe (one lock around every call).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_bytes: int | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        *,
        flush_every: int | None = 64,
        flush_seconds: float | None = 5.0,
        verify_reads: bool = True,
        _must_exist: bool = False,
    ) -> None:
        _check_config(max_bytes, segment_bytes, flush_every, flush_seconds)
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.verify_reads = verify_reads
        self.corrupt: set[int] = set()  # ids found not to match their checksum
        self.recovery = RecoveryReport()
        self._mutex = threading.RLock()
        self._entries: dict[int, _Entry] = {}  # insertion order is age order
        self._live: dict[int, int] = {}  # segment number -> blocks held in it
        self._sizes: dict[int, int] = {}  # segment number -> bytes written to it
        self._maps: dict[int, mmap.mmap] = {}
        self._layouts: OrderedDict[tuple[int, int], rec.Layout] = OrderedDict()  # LRU, by (segment, offset)
        self._written_layouts: dict[bytes, int] = {}  # layout -> its offset in the active segment
        self._nbytes = 0
        self._next_segment = 1
        self._active: int | None = None  # segment being appended to
        self._writer = None
        self._segments_dir_dirty = False
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._lock_file = None
        self._closed = False
        self._prepare_directory(_must_exist)
        self._acquire_lock()
        try:
            _upgrade_marker(self.directory / MARKER)
            self._load()
        except BaseException:
            self._release_lock()
            raise

    @classmethod
    def open(cls, directory: str | os.PathLike, **kwargs) -> DiskLog:
        """Reopen an existing session directory (raises ``NotASessionDirError`` otherwise)."""
        return cls(directory, _must_exist=True, **kwargs)

    # --- public API ---------------------------------------------------------------------

    def put(self, block: StoredBlock) -> None:
        """Append a block: ``append(prepare(block))``."""
        self.append(self.prepare(block))

    def prepare(self, block: StoredBlock) -> rec.EncodedRecord:
        """Lay a block out as the record ``append`` writes (``header.record_len`` bytes); writes nothing.

        Raises ``InvalidBlockError`` for a duplicate id, metadata that is not JSON, a tensor
        that has no byte layout, or a block bigger than ``max_bytes``.
        """
        with self._mutex:
            self._check_open()
            try:
                record = rec.encode_record(block)
            except ValueError as e:
                raise InvalidBlockError(str(e)) from None
            block_id, size = record.header.block_id, record.header.record_len
            self._check_new(block_id)
            if self.max_bytes is not None and size > self.max_bytes:
                raise InvalidBlockError(
                    f"block {block_id} takes {size} bytes on disk, more than the disk budget "
                    f"max_bytes={self.max_bytes}; raise the budget"
                )
            return record

    def append(self, record: rec.EncodedRecord) -> None:
        """Write a record from ``prepare``. Raises ``DiskBudgetError`` (writing nothing) if it
        would take ``nbytes`` past ``max_bytes``: make room with ``drop`` first."""
        with self._mutex:
            self._check_open()
            block_id, size = record.header.block_id, record.header.record_len
            self._check_new(block_id)
            if self.overflow(size):
                raise DiskBudgetError(
                    f"block {block_id} needs {size} bytes but the disk tier at {self.directory} holds "
                    f"{self._nbytes} of max_bytes={self.max_bytes}; drop blocks first"
                )
            self._append(record)
            self._maybe_flush()

    def overflow(self, extra: int = 0) -> int:
        """Bytes to drop before ``extra`` more bytes fit ``max_bytes`` (0 if they fit or it is None)."""
        if self.max_bytes is None:
            return 0
        return max(0, self._nbytes + extra - self.max_bytes)

    def _check_new(self, block_id: int) -> None:
        if block_id in self._entries:
            raise InvalidBlockError(f"block {block_id} is already in the disk tier at {self.directory}")

    def get(self, block_id: int) -> StoredBlock:
        """The block, its tensors memory-mapped (copy-on-write: writing to them never reaches disk).

        Raises ``CorruptBlockError`` (and adds the id to ``corrupt``) if the payload does not
        match its checksum, ``BlockNotFoundError`` if the id is not held.
        """
        with self._mutex:
            self._check_open()
            entry = self._entry(block_id)
            buf = self._readable(block_id, entry)
            if self.verify_reads:
                self._check_crc(block_id, entry, buf)
            try:
                block = rec.decode_payload(
                    buf, entry.offset, entry.header, self._layout(block_id, entry, buf)
                )
            except (ValueError, KeyError, TypeError) as e:
                raise self._corrupt(block_id, f"its record does not parse ({e})") from None
            if block.id != block_id:
                raise self._corrupt(block_id, f"its record holds block {block.id}")
            return block

    def get_many(self, ids: Iterable[int], skip_corrupt: bool = False) -> list[StoredBlock]:
        """The blocks with these ids, in this order.

        With ``skip_corrupt`` a corrupt block is left out (logged, and listed in ``corrupt``)
        instead of raising ``CorruptBlockError``. A missing id always raises.
        """
        blocks = []
        for block_id in ids:
            try:
                blocks.append(self.get(block_id))
            except CorruptBlockError as e:
                if not skip_corrupt:
                    raise
                log.warning("skipping corrupt block: %s", e)
        return blocks

    def ids(self) -> list[int]:
        """Ids of the blocks held, oldest (first put) first."""
        with self._mutex:
            return list(self._entries)

    def entries(self) -> Iterator[tuple[int, int]]:
        """``(block id, record bytes)`` of the blocks held, oldest first, read lazily: an
        eviction policy may stop early. Do not put or drop while iterating."""
        return ((block_id, entry.nbytes) for block_id, entry in self._entries.items())

    def meta(self, block_id: int) -> dict:
        """A block's metadata from the table (a copy), without touching its record."""
        with self._mutex:
            return copy.deepcopy(self._entry(block_id).meta)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._entries

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids())

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of the records of the blocks held: what ``max_bytes`` bounds."""
        return self._nbytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of the segment files on disk (``nbytes`` plus dead space of dropped blocks)."""
        with self._mutex:
            return sum(self._sizes.values())

    def drop(self, block_id: int) -> None:
        """Forget a block; its segment file is deleted once every block in it is dropped."""
        with self._mutex:
            self._check_open()
            self._entry(block_id)
            self._delete_segments(self._forget(block_id))

    def verify(self) -> list[int]:
        """Check every block's checksum; returns the bad ids (oldest first), also added to ``corrupt``."""
        with self._mutex:
            self._check_open()
            bad = []
            for block_id, entry in self._entries.items():
                try:
                    self._check_crc(block_id, entry, self._readable(block_id, entry))
                except CorruptBlockError:
                    bad.append(block_id)
            return bad

    def sync(self) -> None:
        """Make every record put so far durable without rewriting the table (O(1) in blocks held).

        Reopening finds records past the table by scanning the segments, so they survive a
        crash or power loss; ``flush`` also rewrites the table so that scan stays short.
        Drops are made durable only by ``flush``.
        """
        with self._mutex:
            self._check_open()
            self._sync_segments()

    def _sync_segments(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
        if self._segments_dir_dirty:
            fsync_dir(self.directory / SEGMENTS)  # new segment files' names
            self._segments_dir_dirty = False

    def flush(self) -> None:
        """Make everything put so far durable: fsync the segment, then replace the table atomically."""
        with self._mutex:
            self._check_open()
            self._sync_segments()
            write_atomically(self.directory / TABLE, self._table_json())
            self._unflushed = 0
            self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and release the directory. Tensors already returned stay valid."""
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._close_writer()
                # Never mmap.close(): tensors from get() may still point into the maps, and
                # each map is unmapped when its last tensor goes.
                self._maps.clear()
                self._release_lock()
                self._closed = True

    def __enter__(self) -> DiskLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DiskLog({str(self.directory)!r}, blocks={len(self)}, nbytes={self._nbytes}, "
            f"max_bytes={self.max_bytes})"
        )

    # --- directory and lock -------------------------------------------------------------

    def _prepare_directory(self, must_exist: bool) -> None:
        d = self.directory
        if (d / MARKER).exists():
            _check_marker(d / MARKER)
        elif must_exist:
            raise NotASessionDirError(
                f"{d} is not a streamvlm disk-tier session directory (no {MARKER}); "
                "use DiskLog(directory) to create one"
            )
        elif d.exists() and not d.is_dir():
            raise NotASessionDirError(f"disk tier directory {d} is a file, not a directory")
        elif d.exists() and any(d.iterdir()):
            raise NotASessionDirError(
                f"{d} is not a streamvlm disk-tier session directory (no {MARKER}) and is not "
                "empty; pick a new or empty directory"
            )
        else:
            self._create_directory()
        if not os.access(d, os.W_OK | os.X_OK):
            raise DirectoryNotWritableError(f"disk tier directory {d} is not writable; fix its permissions")

    def _create_directory(self) -> None:
        d = self.directory
        try:
            (d / SEGMENTS).mkdir(parents=True, exist_ok=True)
            _write_marker(d / MARKER)
        except OSError as e:
            raise DirectoryNotWritableError(
                f"cannot create disk tier directory {d}: {e.strerror or e}"
            ) from None

    def _acquire_lock(self) -> None:
        path = self.directory / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DirectoryNotWritableError(f"cannot create lock file {path}: {e.strerror or e}") from None
        lock_file = os.fdopen(fd, "r+b")
        try:
            # flock belongs to the open file: the kernel releases it when the process dies,
            # so a killed writer never blocks a resume.
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = lock_file.read().decode(errors="replace").strip() or "?"
            lock_file.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise DiskTierLockedError(
                    f"disk tier {self.directory} is already open in process {owner}; close it there first"
                ) from None
            raise
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n".encode())
        lock_file.flush()
        self._lock_file = lock_file

    def _release_lock(self) -> None:
        # Leave the lock file in place: unlinking it would let a second process lock a new
        # inode while a third still holds the old one.
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None

    def _check_open(self) -> None:
        if self._closed:
            raise DiskTierClosedError(f"disk tier {self.directory} is closed")

    # --- loading and recovery -----------------------------------------------------------

    def _load(self) -> None:
        table = self._read_table()
        on_disk = self._segment_files()
        if table is not None:
            self._restore_table(table, on_disk)
        known_ends, table_next = dict(self._sizes), self._next_segment
        for number, path in sorted(on_disk.items()):
            if number in known_ends:
                self._recover_segment(number, path, known_ends[number])
            elif table is None or number >= table_next:  # created after the table was written
                self._recover_segment(number, path, 0)
            else:
                self._remove_leftover(number, path)
        self._next_segment = max([self._next_segment, *(n + 1 for n in on_disk)])
        self._delete_segments([n for n in list(self._sizes) if not self._live.get(n)])
        self._resume_active()
        self._report()
        if table is None or not self.recovery.clean:
            self.flush()  # so the table exists and is the whole truth again

    def _read_table(self) -> dict | None:
        path = self.directory / TABLE
        if not path.exists():
            if self._segment_files():
                self.recovery.table_error = f"{TABLE} is missing"
            return None
        try:
            table = json.loads(path.read_bytes())
            _check_table(table)
        except (ValueError, KeyError, TypeError) as e:
            self.recovery.table_error = f"{TABLE} is unreadable ({type(e).__name__}: {e})"
            return None
        return table

    def _restore_table(self, table: dict, on_disk: dict[int, Path]) -> None:
        self._next_segment = int(table["next_segment"])
        for name, size in table["segments"].items():
            number = int(name.removesuffix(SEGMENT_SUFFIX))
            if number in on_disk:
                self._sizes[number] = int(size)
        for row in table["blocks"]:
            entry = _Entry(
                int(row["segment"]),
                int(row["offset"]),
                int(row["length"]),
                int(row["crc32"]),
                row["meta"],
                int(row.get("version", 1)),  # rows of a format-1 table have neither
                int(row.get("layout", 0)),
            )
            if entry.segment not in on_disk:
                self.recovery.lost.append(int(row["id"]))
                continue
            self._add(int(row["id"]), entry)

    def _recover_segment(self, number: int, path: Path, start: int) -> None:
        """Adopt the intact records past ``start`` and truncate a torn tail."""
        size = path.stat().st_size
        self._sizes[number] = max(start, self._sizes.get(number, 0))
        if size <= start:
            return
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                found = rec.scan(buf, start, size)
            except rec.RecordVersionError as e:
                raise UnsupportedFormatError(
                    f"{path} holds records of format version {e.version}; this streamvlm reads "
                    f"versions {rec.READABLE_VERSIONS}: upgrade streamvlm"
                ) from None
            damaged = list(found.damaged)
            for offset, header in found.records:
                if header.is_layout:
                    continue
                entry = _Entry(
                    number, offset, header.payload_len, header.payload_crc, {}, header.version, header.layout
                )
                try:
                    layout = self._cached_layout(number, header.layout, buf) if header.version > 1 else None
                    entry.meta = rec.read_meta(buf, offset, header, layout)
                except (ValueError, KeyError, TypeError):
                    damaged.append((offset, header.record_len))  # its layout record is damaged
                    continue
                if header.block_id in self._entries:  # dropped and put again: the later record wins
                    self._forget(header.block_id)
                self._add(header.block_id, entry)
                self.recovery.recovered.append(header.block_id)
        self.recovery.damaged += [TornTail(path.name, o, n) for o, n in sorted(damaged)]
        if found.torn:
            self.recovery.torn.append(TornTail(path.name, found.end, found.torn))
            os.truncate(path, found.end)  # so appends resume right after the last intact record
        self._sizes[number] = found.end

    def _remove_leftover(self, number: int, path: Path) -> None:
        """A segment the table no longer lists: its blocks were all dropped, its deletion interrupted."""
        path.unlink()
        self.recovery.removed_segments.append(path.name)
        self._segments_dir_dirty = True

    def _resume_active(self) -> None:
        """Keep appending to the newest segment if it has room."""
        if not self._sizes:
            return
        newest = max(self._sizes)
        path = self._segment_path(newest)
        # A segment shorter than the table says was damaged: never append where records are listed.
        intact = path.stat().st_size == self._sizes[newest]
        if newest == self._next_segment - 1 and intact and self._sizes[newest] < self.segment_bytes:
            self._open_writer(newest)

    def _report(self) -> None:
        r = self.recovery
        if r.table_error:
            log.warning(
                "disk tier %s: %s; rebuilt the table from the segments", self.directory, r.table_error
            )
        for tail in r.torn:
            log.warning(
                "disk tier %s: ignored a torn record: %d bytes at %s:%d (a write cut short by a crash)",
                self.directory,
                tail.nbytes,
                tail.segment,
                tail.offset,
            )
        for span in r.damaged:
            log.warning(
                "disk tier %s: skipped %d damaged bytes at %s:%d",
                self.directory,
                span.nbytes,
                span.segment,
                span.offset,
            )
        if r.lost:
            log.warning("disk tier %s: blocks %s lost with their segment files", self.directory, r.lost)
        if r.recovered and not r.table_error:
            log.info("disk tier %s: recovered %d unflushed blocks", self.directory, len(r.recovered))

    def _segment_files(self) -> dict[int, Path]:
        found = {}
        for path in (self.directory / SEGMENTS).glob("*" + SEGMENT_SUFFIX):
            stem = path.name.removesuffix(SEGMENT_SUFFIX)
            if stem.isdigit():
                found[int(stem)] = path
        return found

    def _table_json(self) -> bytes:
        blocks = [
            {
                "id": block_id,
                "segment": e.segment,
                "offset": e.offset,
                "length": e.payload_len,
                "crc32": e.crc,
                "meta": e.meta,
                "version": e.version,
                "layout": e.layout,
            }
            for block_id, e in self._entries.items()
        ]
        table = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "next_segment": self._next_segment,
            "segments": {_segment_name(n): size for n, size in sorted(self._sizes.items())},
            "blocks": blocks,
        }
        return json.dumps(table, separators=(",", ":")).encode()

    # --- writing ------------------------------------------------------------------------

    def _append(self, record: rec.EncodedRecord) -> None:
        size = record.header.record_len
        if self._writer is None or (
            self._sizes[self._active]
            and self._sizes[self._active] + size + self._layout_cost(record) > self.segment_bytes
        ):
            self._roll()
        number, start = self._active, self._sizes[self._active]
        layout, pieces = self._reusable_layout(record), []
        if layout is None:
            # The layout record goes first: a block record is never on disk without it.
            layout, pieces = start, record.layout_pieces()
        offset = start + (record.layout_len if pieces else 0)
        pieces += record.pieces(offset, layout)
        try:
            for piece in pieces:
                self._writer.write(piece)
            # Hand the bytes to the OS now: from here a crash of this process loses nothing.
            self._writer.flush()
        except OSError as e:
            self._undo_append(number, start)
            raise DiskTierError(
                f"writing block {record.header.block_id} to {self.directory} failed: {e}"
            ) from None
        self._written_layouts[record.layout.encoded] = layout
        self._sizes[number] = offset + size
        h = record.header
        self._add(
            h.block_id, _Entry(number, offset, h.payload_len, h.payload_crc, record.meta, h.version, layout)
        )
        self._unflushed += 1

    def _reusable_layout(self, record: rec.EncodedRecord) -> int | None:
        """Offset of a layout record of ``record``'s layout that it may point to if appended
        to the active segment now; None if it needs its own."""
        layout = self._written_layouts.get(record.layout.encoded)
        if layout is None or self._sizes[self._active] - layout > LAYOUT_SPAN_BYTES:
            return None
        return layout

    def _layout_cost(self, record: rec.EncodedRecord) -> int:
        """Bytes of the layout record ``record`` needs in the active segment (0 if it has it)."""
        return 0 if self._reusable_layout(record) is not None else record.layout_len

    def _undo_append(self, number: int, offset: int) -> None:
        """Cut a half-written record off (e.g. disk full) so the segment stays a clean sequence."""
        self._written_layouts = {k: v for k, v in self._written_layouts.items() if v < offset}
        self._close_writer()
        try:
            os.truncate(self._segment_path(number), offset)
        except OSError:
            pass  # the next open will find and truncate the torn tail

    def _roll(self) -> None:
        """Start a new segment; the finished one is fsynced so the next table may point into it."""
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._close_writer()
        number = self._next_segment
        self._next_segment += 1
        self._sizes[number] = 0
        self._live[number] = 0
        self._segments_dir_dirty = True
        self._open_writer(number)

    def _open_writer(self, number: int) -> None:
        self._writer = open(self._segment_path(number), "ab")
        self._active = number
        # Layouts already in a reopened segment are not known: each is written again once.
        self._written_layouts = {}

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._active = None
        self._written_layouts = {}

    def _maybe_flush(self) -> None:
        due = self.flush_every is not None and self._unflushed >= self.flush_every
        late = self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds
        if self._unflushed and (due or late):
            self.flush()

    # --- bookkeeping --------------------------------------------------------------------

    def _add(self, block_id: int, entry: _Entry) -> None:
        self._entries[block_id] = entry
        self._live[entry.segment] = self._live.get(entry.segment, 0) + 1
        self._nbytes += entry.nbytes

    def _forget(self, block_id: int) -> list[int]:
        """Remove a block from the table; returns the segments it leaves empty."""
        entry = self._entries.pop(block_id)
        self._nbytes -= entry.nbytes
        self.corrupt.discard(block_id)
        self._live[entry.segment] -= 1
        return [entry.segment] if self._live[entry.segment] == 0 else []

    def _delete_segments(self, numbers: list[int]) -> None:
        """Delete emptied segment files, after a flushed table has stopped pointing into them."""
        if not numbers:
            return
        for number in numbers:
            if number == self._active:
                self._close_writer()
            self._live.pop(number, None)
            self._sizes.pop(number, None)
            self._maps.pop(number, None)  # unmapped when no tensor uses it any more
            for key in [key for key in self._layouts if key[0] == number]:
                del self._layouts[key]
        self.flush()
        for number in numbers:
            self._segment_path(number).unlink(missing_ok=True)
        fsync_dir(self.directory / SEGMENTS)

    # --- reading ------------------------------------------------------------------------

    def _entry(self, block_id: int) -> _Entry:
        try:
            return self._entries[block_id]
        except KeyError:
            raise BlockNotFoundError(
                f"block {block_id} is not in the disk tier at {self.directory}"
            ) from None

    def _segment_path(self, number: int) -> Path:
        return self.directory / SEGMENTS / _segment_name(number)

    def _readable(self, block_id: int, entry: _Entry) -> mmap.mmap:
        """A map of the block's segment that covers its record."""
        buf = self._maps.get(entry.segment)
        if buf is None or len(buf) < entry.end:
            # The active segment grows: map it again (the old map lives on in old tensors).
            try:
                with open(self._segment_path(entry.segment), "rb") as f:
                    if os.fstat(f.fileno()).st_size < entry.end:
                        raise self._corrupt(block_id, "its segment file is shorter than its record")
                    # ACCESS_COPY: tensors are writable without a warning, writes never reach disk.
                    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except FileNotFoundError:
                raise self._corrupt(block_id, "its segment file is missing") from None
            self._maps[entry.segment] = buf
        return buf

    def _check_crc(self, block_id: int, entry: _Entry, buf: mmap.mmap) -> None:
        if rec.payload_crc(buf, entry.offset, entry.payload_len, entry.version) != entry.crc:
            raise self._corrupt(block_id, "its payload does not match its checksum")
        if entry.version > 1 and not rec.layout_intact(buf, entry.layout):
            raise self._corrupt(block_id, f"its layout record at offset {entry.layout} is damaged")

    def _layout(self, block_id: int, entry: _Entry, buf: mmap.mmap) -> rec.Layout | None:
        """The layout of a block's record (None for a version-1 record, which has its own)."""
        if entry.version == 1:
            return None
        try:
            return self._cached_layout(entry.segment, entry.layout, buf)
        except (ValueError, KeyError, TypeError) as e:
            raise self._corrupt(block_id, f"its layout record does not read ({e})") from None

    def _cached_layout(self, segment: int, offset: int, buf) -> rec.Layout:
        key = (segment, offset)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = rec.read_layout(buf, offset)
            if len(self._layouts) > _LAYOUT_CACHE:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(key)
        return layout

    def _corrupt(self, block_id: int, why: str) -> CorruptBlockError:
        self.corrupt.add(block_id)
        entry = self._entries[block_id]
        where = f"{_segment_name(entry.segment)}:{entry.offset}"
        return CorruptBlockError(
            block_id, f"block {block_id} in disk tier {self.directory} ({where}) is corrupt: {why}"
        )


def _check_config(max_bytes, segment_bytes, flush_every, flush_seconds) -> None:
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError(f"disk tier max_bytes must be positive or None, got {max_bytes}")
    if segment_bytes < 4096:
        raise ConfigError(f"disk tier segment_bytes must be at least 4096, got {segment_bytes}")
    if flush_every is not None and flush_every < 1:
        raise ConfigError(f"disk tier flush_every must be at least 1 or None, got {flush_every}")
    if flush_seconds is not None and flush_seconds < 0:
        raise ConfigError(f"disk tier flush_seconds must be >= 0 or None, got {flush_seconds}")


def _write_marker(path: Path) -> None:
    write_atomically(path, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}).encode())


def _upgrade_marker(path: Path) -> None:
    """Mark a format-1 directory as format 2 before a format-2 record can reach it."""
    if json.loads(path.read_bytes())["version"] != FORMAT_VERSION:
        _write_marker(path)


def _check_marker(path: Path) -> None:
    try:
        marker = json.loads(path.read_bytes())
        name, version = marker["format"], marker["version"]
    except (OSError, ValueError, KeyError, TypeError):
        raise NotASessionDirError(f"{path} is not a streamvlm disk-tier marker file") from None
    if name != FORMAT_NAME:
        raise NotASessionDirError(f"{path.parent} holds a {name!r}, not a streamvlm disk-tier session")
    if version not in READABLE_FORMATS:
        raise UnsupportedFormatError(
            f"{path.parent} is disk-tier format version {version}; this streamvlm reads versions "
            f"{READABLE_FORMATS}: upgrade streamvlm or use another directory"
        )


def _check_table(table: dict) -> None:
    """Raise ValueError/KeyError/TypeError if the table's structure is not what we write."""
    if table["format"] != FORMAT_NAME:
        raise ValueError(f"format {table['format']!r}")
    if table["version"] not in READABLE_FORMATS:
        raise UnsupportedFormatError(
            f"the disk-tier table is format version {table['version']}; this streamvlm reads "
            f"versions {READABLE_FORMATS}: upgrade streamvlm"
        )
    int(table["next_segment"])
    for name, size in table["segments"].items():
        int(name.removesuffix(SEGMENT_SUFFIX))
        int(size)
    for row in table["blocks"]:
        for key in ("id", "segment", "offset", "length", "crc32"):
            int(row[key])
        if int(row.get("version", 1)) not in rec.READABLE_VERSIONS:
            raise ValueError(f"record version {row['version']}")
        int(row.get("layout", 0))
        if not isinstance(row["meta"], dict):
            raise TypeError("block meta is not an object")
