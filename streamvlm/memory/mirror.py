"""A session directory mirrored to a shared object store, with fencing: ``SessionMirror``.

In cluster mode the replica that owns a session *publishes* its session directory after
every checkpoint; a replica that takes a session over *restores* the latest published copy
into a fresh local directory and resumes from there (``Session.resume``). Layout in the
store (``objectstore.py``)::

    sessions/<id>/manifests/<version:012d>.json     create-only commits, one per publish
    sessions/<id>/objects/<fence:010d>/<seq:08d>-<flattened relpath>   immutable file parts

A manifest lists, per file of the session directory, the parts it is the concatenation of
(``{"key", "length", "crc32"}``, keys relative to ``sessions/<id>/``). Objects are never
rewritten. Segment files (``segments/*.seg``) are append-only, so a publish uploads only
the bytes appended since the last one, as a new part; a segment found shorter than, or
different from, what was uploaded (recovery truncated a torn tail) is uploaded whole
again. Every other file is uploaded whole when its crc32 changed. The ``lock`` file and
``*.tmp`` files are never mirrored.

Fencing is enforced by the store, not only by the lease registry: each writer carries a
fence (a number the registry hands out, higher for every new owner). A manifest is written
with ``put_new`` at the next version, so two commits can never both land on one version;
a writer that finds a manifest with a higher fence than its own raises ``FencedError`` and
never commits again. ``claim`` (a takeover) commits a manifest with the new, higher fence
on top of the latest, so any later publish of the old owner is refused. What a fenced
writer uploads after that lies under its own fence prefix, is referenced by no manifest,
and is deleted by the next owner's garbage collection.

Garbage: after committing version v a writer deletes manifests older than v-1 and then
the objects under its own or lower fences that neither v nor v-1 references. Keeping v-1
lets a reader that read it just before the commit finish its download; every manifest
kept is complete (``verify`` checks them all). Objects under higher fences are never
touched: they belong to a newer owner still uploading.

Consistency contract: ``publish`` copies the directory as it is, so call it after
``Session.checkpoint`` while nothing writes the directory (under the session's lock). It
reads the small files first and the append-only segments last, so a copy made while
blocks are still appended stays resumable (the reopened log recovers or truncates what
lies past the table); a segment deleted during a publish is not covered.

One writer per fence: the registry must hand each owner its own fence.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, StreamVLMError
from .checkpoint import SESSION_FILE
from .disk import LOCK, SEGMENT_SUFFIX, SEGMENTS, fsync_dir
from .objectstore import ObjectNotFoundError, ObjectStore, ObjectStoreError

__all__ = [
    "FencedError",
    "MirrorConflictError",
    "NoSuchSessionError",
    "RestoreTargetError",
    "SessionMirror",
    "delete_session",
    "latest_version",
    "verify",
]

MANIFEST_FORMAT = "streamvlm-mirror"
PART_BYTES = 32 << 20  # a bigger file or append is uploaded as several parts (bounded memory per part)
TRANSFER_THREADS = 8  # parallel puts and gets: an object store's throughput grows with them
COMMIT_ATTEMPTS = 8  # lost races before giving up (each loser re-reads; only a storm of writers loses 8)
_SESSION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_OBJECT_KEY = re.compile(r"objects/(\d{10})/")  # its fence: whose garbage it can be
_FENCE_LIMIT = 10**10  # fits the key's 10 digits

log = logging.getLogger(__name__)


class FencedError(StreamVLMError):
    """A newer owner committed to the session: this writer may no longer write it."""


class NoSuchSessionError(StreamVLMError):
    """The store holds no published state for the session."""


class RestoreTargetError(StreamVLMError):
    """``restore`` was given a directory that already holds a session."""


class MirrorConflictError(ObjectStoreError):
    """Commits kept racing with other writers of the same fence or lower ones."""


@dataclass(frozen=True)
class Part:
    """One immutable object holding ``length`` bytes of a file, at the position its list gives."""

    key: str  # relative to sessions/<id>/
    length: int
    crc32: int


@dataclass(frozen=True)
class Manifest:
    """One committed version of a session directory: each file as the list of its parts."""

    version: int
    fence: int  # the committing writer's fence
    owner: str  # who committed it (diagnostics only)
    created_at: float  # unix time of the commit
    files: dict[str, tuple[Part, ...]]  # relative path -> parts, concatenated in order

    def to_bytes(self) -> bytes:
        files = {rel: [vars(p) for p in parts] for rel, parts in sorted(self.files.items())}
        record = {"format": MANIFEST_FORMAT, "version": self.version, "fence": self.fence}
        record.update(owner=self.owner, created_at=self.created_at, files=files)
        return json.dumps(record, indent=0).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        try:
            record = json.loads(data)
            if record.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            files = {rel: tuple(Part(**p) for p in parts) for rel, parts in record["files"].items()}
            return cls(record["version"], record["fence"], record["owner"], record["created_at"], files)
        except (ValueError, KeyError, TypeError) as e:
            raise ObjectStoreError(
                f"{where} is not a streamvlm mirror manifest ({e}); use the streamvlm that wrote it"
            ) from e

    def keys(self) -> set[str]:
        return {p.key for parts in self.files.values() for p in parts}


# ---------------------------------------------------------------- reading the store


def _prefix(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise ConfigError(f"session id {session_id!r}: use letters, digits, '_', '-', '.' (up to 200)")
    return f"sessions/{session_id}/"


def _manifest_key(session_id: str, version: int) -> str:
    return f"{_prefix(session_id)}manifests/{version:012d}.json"


def _versions(store: ObjectStore, session_id: str) -> list[int]:
    """The versions of the manifests in the store, ascending."""
    keys = store.list(_prefix(session_id) + "manifests/")
    names = (k.rsplit("/", 1)[1].removesuffix(".json") for k in keys if k.endswith(".json"))
    return sorted(int(name) for name in names if name.isdigit())


def _read_manifest(store: ObjectStore, session_id: str, version: int) -> Manifest:
    key = _manifest_key(session_id, version)
    return Manifest.from_bytes(store.get(key), key)


def _read_latest(store: ObjectStore, session_id: str) -> Manifest | None:
    """The newest manifest, or ``None`` when the session was never published."""
    for _ in range(COMMIT_ATTEMPTS):
        versions = _versions(store, session_id)
        if not versions:
            return None
        try:
            return _read_manifest(store, session_id, versions[-1])
        except ObjectNotFoundError:  # deleted after the listing: a newer one exists, list again
            continue
    raise MirrorConflictError(f"manifests of session {session_id!r} kept vanishing while read; retry")


def latest_version(store: ObjectStore, session_id: str) -> int | None:
    """The version of the newest manifest of ``session_id``; ``None`` if there is none or
    the session was deleted (its newest manifest is a tombstone: no files)."""
    latest = _read_latest(store, session_id)
    return latest.version if latest is not None and latest.files else None


def verify(store: ObjectStore, session_id: str) -> list[str]:
    """Check every manifest kept for ``session_id``: each part present, of its length and crc32
    (every object is read once: this costs a download of the session).

    Returns the problems found, one line each; ``[]`` means intact. Raises
    ``NoSuchSessionError`` when the session has no manifest.
    """
    prefix = _prefix(session_id)
    versions = _versions(store, session_id)
    if not versions:
        raise NoSuchSessionError(f"no published session {session_id!r} in {store.url}")
    problems, checked = [], {}
    for version in versions:
        try:
            manifest = _read_manifest(store, session_id, version)
        except ObjectNotFoundError:  # collected while we looked: not a problem
            continue
        except ObjectStoreError as e:
            problems.append(str(e))
            continue
        for rel, parts in sorted(manifest.files.items()):
            for i, part in enumerate(parts):
                if part.key not in checked:
                    try:
                        data = store.get(prefix + part.key)
                        checked[part.key] = (len(data), zlib.crc32(data))
                    except ObjectNotFoundError:
                        checked[part.key] = None
                found = checked[part.key]
                where = f"manifest {version}: {rel} part {i} ({part.key})"
                if found is None:
                    problems.append(f"{where}: object missing")
                elif found != (part.length, part.crc32):
                    problems.append(
                        f"{where}: {found[0]} bytes crc32 {found[1]:08x}, manifest says "
                        f"{part.length} bytes crc32 {part.crc32:08x}"
                    )
    return problems


def delete_session(store: ObjectStore, session_id: str, fence: int | None = None, owner: str = "") -> None:
    """Remove what the store holds for ``session_id`` (manifests first: no reader ever finds
    a manifest whose objects are gone).

    With the deleting writer's ``fence`` a tombstone stays: an empty manifest with that
    fence, newest of all, so that a replica whose lease was taken just before the delete
    cannot publish the session back (its fence is older: ``FencedError``), and a restore
    finds nothing (``NoSuchSessionError``). A new session of the same name, with a newer
    fence, publishes on top of it. ``FencedError`` if a newer owner has committed.
    """
    prefix = _prefix(session_id)
    keep = set()
    if fence is not None:
        keep.add(_manifest_key(session_id, SessionMirror(store, session_id, fence, owner).bury()))
    store.delete(k for k in store.list(prefix + "manifests/") if k not in keep)
    store.delete(k for k in store.list(prefix) if k not in keep)


# ---------------------------------------------------------------- the local directory


def _local_files(directory: Path) -> list[str]:
    """Relative paths of the files to mirror: all regular files but the lock and ``*.tmp``."""
    found = []
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), directory).replace(os.sep, "/")
            if rel != LOCK and not name.endswith(".tmp") and os.path.isfile(os.path.join(dirpath, name)):
                found.append(rel)
    return sorted(found)


def _is_segment(rel: str) -> bool:
    return rel.startswith(SEGMENTS + "/") and rel.endswith(SEGMENT_SUFFIX)


def _signature(path: Path) -> tuple[int, int, int]:
    """What changes when a file is appended to, truncated or replaced."""
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]


def _prefix_matches(path: Path, parts: tuple[Part, ...]) -> bool:
    """Whether the file starts with the bytes of ``parts`` (read back and crc-checked)."""
    with open(path, "rb") as f:
        for part in parts:
            data = f.read(part.length)
            if len(data) != part.length or zlib.crc32(data) != part.crc32:
                return False
    return True


@dataclass
class _Upload:
    """One part to upload: ``data`` when already read, else ``length`` bytes of ``path`` at ``offset``."""

    rel: str
    key: str
    data: bytes | None = None
    path: Path | None = None
    offset: int = 0
    length: int = 0


# ---------------------------------------------------------------- the mirror


class SessionMirror:
    """Publishes one session directory to ``store`` as ``sessions/<session_id>/``, fenced.

    ``fence`` is this writer's fencing token (from the lease registry; every new owner's is
    higher), ``owner`` a name for diagnostics. A writer restoring a session uses
    ``SessionMirror.restore``; the first owner of a new session constructs one and
    ``publish``es. ``version`` is the last manifest this writer committed or restored.
    Not thread-safe: one publish at a time.
    """

    def __init__(self, store: ObjectStore, session_id: str, fence: int, owner: str) -> None:
        self._prefix = _prefix(session_id)
        if not isinstance(fence, int) or not 0 <= fence < _FENCE_LIMIT:
            raise ConfigError(f"fence {fence!r}: use an integer in [0, {_FENCE_LIMIT})")
        self.store = store
        self.session_id = session_id
        self.fence = fence
        self.owner = owner
        self.version: int | None = None
        self._base: Manifest | None = None  # the manifest committed or restored last
        self._signatures: dict[str, tuple[int, int, int]] = {}  # segment -> signature when last matched _base
        self._next_seq: int | None = None  # next object number under this fence (found on first upload)
        self._stats = {"publishes": 0, "bytes_uploaded": 0, "objects_uploaded": 0, "bytes_downloaded": 0}
        self._stats_lock = threading.Lock()
        self._last_publish_s: float | None = None

    # ------------------------------------------------------------ public API

    def publish(self, directory: str | Path) -> int:
        """Upload what changed in ``directory`` since the latest manifest and commit the next
        manifest; returns its version. ``FencedError`` when a newer owner has committed."""
        start = time.perf_counter()
        directory = Path(directory)
        for _ in range(COMMIT_ATTEMPTS):
            latest = _read_latest(self.store, self.session_id)
            self._check_not_fenced(latest)
            files, signatures = self._upload_changes(directory, latest)
            manifest = self._manifest(latest, files)
            if self._commit(manifest):
                self._signatures = signatures  # only now do they describe what _base holds
                self._stats["publishes"] += 1
                self._last_publish_s = time.perf_counter() - start
                return manifest.version
            # another commit landed first (fenced check on the next turn); redo against it,
            # since its writer's garbage collection may drop objects our list reused
        raise MirrorConflictError(
            f"publish of session {self.session_id!r} lost {COMMIT_ATTEMPTS} races; retry"
        )

    def claim(self) -> int:
        """Commit a manifest with this writer's fence on top of the latest (a takeover): from
        then on the previous owner's publishes are refused. Returns its version.
        ``FencedError`` if a manifest with a higher fence exists."""
        for _ in range(COMMIT_ATTEMPTS):
            latest = _read_latest(self.store, self.session_id)
            self._check_not_fenced(latest)
            if latest is None or self._base is None or latest.version != self._base.version:
                self._signatures = {}  # they described another manifest: verify segments on publish
            if self._commit(self._manifest(latest, dict(latest.files) if latest else {})):
                return self.version
        raise MirrorConflictError(f"claim of session {self.session_id!r} lost {COMMIT_ATTEMPTS} races; retry")

    def bury(self) -> int:
        """Commit an empty manifest (a tombstone) with this writer's fence on top of the
        latest; returns its version (``delete_session``)."""
        for _ in range(COMMIT_ATTEMPTS):
            latest = _read_latest(self.store, self.session_id)
            self._check_not_fenced(latest)
            if self._commit(self._manifest(latest, {})):
                return self.version
        raise MirrorConflictError(
            f"delete of session {self.session_id!r} lost {COMMIT_ATTEMPTS} races; retry"
        )

    @classmethod
    def restore(
        cls, store: ObjectStore, session_id: str, directory: str | Path, fence: int, owner: str
    ) -> SessionMirror:
        """Download the latest manifest's files into ``directory`` and ``claim`` the session on
        top of exactly that manifest, so nothing committed meanwhile is lost: if another
        commit lands first, the directory is brought up to it and the claim retried. Every
        part is crc-checked; files are written atomically, ``session.json`` last.

        ``directory`` is new, empty, or left by an interrupted restore (no ``session.json``):
        whatever it holds that the manifest does not list is deleted (a stray segment would
        bring dropped blocks back when the log is reopened).

        Raises ``NoSuchSessionError`` (nothing published), ``FencedError`` (a newer owner
        holds it) and ``RestoreTargetError`` (``directory`` already holds a session).
        """
        directory = Path(directory)
        if (directory / SESSION_FILE).exists():
            raise RestoreTargetError(
                f"{directory} already holds a session; restore {session_id!r} into a new directory"
            )
        mirror = cls(store, session_id, fence, owner)
        for _ in range(COMMIT_ATTEMPTS):
            latest = _read_latest(store, session_id)
            if latest is None or not latest.files:
                raise NoSuchSessionError(f"no published session {session_id!r} in {store.url}")
            mirror._check_not_fenced(latest)
            try:
                mirror._download(latest, directory)
            except ObjectNotFoundError as e:
                if latest_version(store, session_id) == latest.version:  # no newer commit collected it
                    raise ObjectStoreError(
                        f"session {session_id!r} version {latest.version} is damaged ({e}); see verify()"
                    ) from e
                continue  # collected by a publish racing us: start again from the newer version
            if mirror._commit(mirror._manifest(latest, dict(latest.files))):
                return mirror
        raise MirrorConflictError(f"restore of session {session_id!r} lost {COMMIT_ATTEMPTS} races; retry")

    def stats(self) -> dict:
        """Counters of this writer: publishes, bytes and objects uploaded, bytes downloaded,
        the duration of the last publish and the version last committed or restored."""
        return {**self._stats, "last_publish_s": self._last_publish_s, "manifest_version": self.version}

    # ------------------------------------------------------------ commits and fencing

    def _check_not_fenced(self, latest: Manifest | None) -> None:
        if latest is not None and latest.fence > self.fence:
            raise FencedError(
                f"session {self.session_id!r} was taken over by {latest.owner!r} (fence {latest.fence} > "
                f"{self.fence}); stop writing it and drop this replica's copy"
            )

    def _manifest(self, latest: Manifest | None, files: dict[str, tuple[Part, ...]]) -> Manifest:
        version = latest.version + 1 if latest else 1
        return Manifest(version, self.fence, self.owner, time.time(), files)

    def _commit(self, manifest: Manifest) -> bool:
        """Create ``manifest`` at its version; ``False`` if that version was taken meanwhile."""
        if not self.store.put_new(_manifest_key(self.session_id, manifest.version), manifest.to_bytes()):
            return False
        previous, self._base, self.version = self._base, manifest, manifest.version
        try:
            self._collect_garbage(manifest, previous)
        except ObjectStoreError as e:  # committed all the same: the next commit collects what is left
            log.warning(
                "session %s: garbage collection after version %d failed: %s",
                self.session_id,
                manifest.version,
                e,
            )
        return True

    def _collect_garbage(self, committed: Manifest, previous: Manifest | None) -> None:
        """Delete manifests older than ``committed.version - 1``, then the objects of this or
        lower fences that no kept manifest references (see the module docstring)."""
        versions = _versions(self.store, self.session_id)
        keep = [v for v in versions if v >= committed.version - 1]
        referenced = set()
        for version in keep:
            if version == committed.version:
                manifest = committed
            elif previous is not None and version == previous.version:
                manifest = previous
            else:
                try:
                    manifest = _read_manifest(self.store, self.session_id, version)
                except ObjectNotFoundError:
                    continue
            referenced |= manifest.keys()
        self.store.delete(_manifest_key(self.session_id, v) for v in versions if v < committed.version - 1)
        garbage = []
        for key in self.store.list(self._prefix + "objects/"):
            rel = key[len(self._prefix) :]
            fence = _OBJECT_KEY.match(rel)
            if fence is not None and int(fence[1]) <= self.fence and rel not in referenced:
                garbage.append(key)
        self.store.delete(garbage)

    # ------------------------------------------------------------ publishing

    def _upload_changes(
        self, directory: Path, latest: Manifest | None
    ) -> tuple[dict[str, tuple[Part, ...]], dict[str, tuple[int, int, int]]]:
        """Upload what ``directory`` holds beyond ``latest``: the files of the next manifest,
        and the signatures of its segments as read."""
        base = latest.files if latest else {}
        # signatures describe our own last manifest; against anyone else's, verify every byte
        trusted = latest is not None and self._base is not None and latest.version == self._base.version
        known = self._signatures if trusted else {}
        files: dict[str, tuple[Part, ...]] = {}
        signatures: dict[str, tuple[int, int, int]] = {}
        uploads: list[_Upload] = []
        rels = _local_files(directory)
        # small files first, segments last: segments only grow, so they cover every table read
        for rel in [r for r in rels if not _is_segment(r)]:
            try:
                data = (directory / rel).read_bytes()
            except FileNotFoundError:  # replaced away during the scan
                continue
            chunks = _chunks(data)
            old = base.get(rel, ())
            if [(p.length, p.crc32) for p in old] == [(len(c), zlib.crc32(c)) for c in chunks]:
                files[rel] = old
            else:
                files[rel] = ()
                uploads += [_Upload(rel, self._new_key(rel), data=c) for c in chunks]
        for rel in [r for r in rels if _is_segment(r)]:
            path = directory / rel
            try:
                signatures[rel] = signature = _signature(path)
            except FileNotFoundError:
                continue
            old = base.get(rel, ())
            if rel in base and known.get(rel) == signature:
                files[rel] = old  # unchanged since it matched our last manifest: not even read
                continue
            size, uploaded = signature[0], sum(p.length for p in old)
            if not (rel in base and size >= uploaded and _prefix_matches(path, old)):
                old, uploaded = (), 0  # new, shorter or rewritten (recovery truncated it): whole again
            files[rel] = old
            offsets = list(range(uploaded, size, PART_BYTES)) or (
                [] if old else [0]
            )  # empty file: one empty part
            for offset in offsets:
                length = min(PART_BYTES, size - offset)
                uploads.append(_Upload(rel, self._new_key(rel), path=path, offset=offset, length=length))
        for upload, part in zip(uploads, self._transfer(self._put_part, uploads), strict=True):
            files[upload.rel] += (part,)
        return files, signatures

    def _new_key(self, rel: str) -> str:
        """A fresh object key under this writer's fence."""
        if self._next_seq is None:  # continue after any object this fence left (a restarted writer)
            fence_dir = f"objects/{self.fence:010d}/"
            taken = [k[len(self._prefix + fence_dir) :] for k in self.store.list(self._prefix + fence_dir)]
            self._next_seq = 1 + max((int(name.split("-", 1)[0]) for name in taken), default=0)
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        return f"objects/{self.fence:010d}/{seq:08d}-{rel.replace('/', '__')}"

    def _put_part(self, upload: _Upload) -> Part:
        data = upload.data
        if data is None:
            with open(upload.path, "rb") as f:
                data = os.pread(f.fileno(), upload.length, upload.offset)
            if len(data) != upload.length:
                raise ObjectStoreError(
                    f"{upload.path} shrank while published; publish right after a checkpoint, under the session lock"
                )
        self.store.put(self._prefix + upload.key, data)
        with self._stats_lock:  # parts are put from several threads
            self._stats["bytes_uploaded"] += len(data)
            self._stats["objects_uploaded"] += 1
        return Part(upload.key, len(data), zlib.crc32(data))

    def _transfer(self, work: Callable, items: list) -> list:
        """``work`` over ``items`` on a few threads, results in order (the first error raised)."""
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(TRANSFER_THREADS, len(items))) as pool:
            return list(pool.map(work, items))

    # ------------------------------------------------------------ restoring

    def _download(self, manifest: Manifest, directory: Path) -> None:
        """Make ``directory`` hold exactly ``manifest``'s files (written atomically, crc-checked)."""
        directory.mkdir(parents=True, exist_ok=True)
        for rel in _local_files(directory):  # left by an earlier attempt at an older version
            if rel not in manifest.files:
                (directory / rel).unlink()
        targets = {}
        jobs = []
        try:
            for rel, parts in sorted(manifest.files.items()):
                path = directory / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                targets[rel] = (fd, tmp, path)
                offset = 0
                for part in parts:
                    jobs.append((fd, offset, part))
                    offset += part.length
                os.ftruncate(fd, offset)
            self._transfer(self._get_part, jobs)
            # session.json last: a directory holding it is complete, even after a crash mid-way
            for rel in sorted(targets, key=lambda rel: rel == SESSION_FILE):
                fd, tmp, path = targets[rel]
                os.fsync(fd)
                os.replace(tmp, path)
        finally:
            for fd, tmp, _ in targets.values():
                os.close(fd)
                tmp.unlink(missing_ok=True)
        for parent in {path.parent for _, _, path in targets.values()} | {directory}:
            fsync_dir(parent)
        self._signatures = {rel: _signature(directory / rel) for rel in manifest.files if _is_segment(rel)}

    def _get_part(self, job: tuple[int, int, Part]) -> None:
        fd, offset, part = job
        data = self.store.get(self._prefix + part.key)
        if len(data) != part.length or zlib.crc32(data) != part.crc32:
            raise ObjectStoreError(
                f"object {self._prefix}{part.key} is corrupt ({len(data)} bytes, crc32 {zlib.crc32(data):08x}; "
                f"expected {part.length}, {part.crc32:08x}); run verify() and restore an intact version"
            )
        os.pwrite(fd, data, offset)
        with self._stats_lock:
            self._stats["bytes_downloaded"] += len(data)
