"""A replica's side of a cluster: named sessions, leased in a directory, kept in a shared store.

``SessionRegistry`` keeps the sessions a server holds. When the server is one replica of
a cluster (``ServerSettings.cluster``), it asks ``SharedSessions`` to:

- **create** a session under the name its client gave (``"id": "cam0"``): registered in
  the session directory (Redis) with a hash of its token and its options, leased to this
  replica (fence 1), its directory in this replica's cache and its long-term tier mirrored
  to the shared store at every checkpoint;
- **adopt** a session this replica does not hold (resume on miss): the client's token is
  checked against the directory, the lease taken with the next fence, the newest manifest
  restored from the store into a fresh local directory and the session resumed from it.
  The store refuses the old owner's publishes from then on;
- **keep** what it holds: leases renewed by a ``LeaseKeeper`` thread (it goes on while the
  event loop or the model is busy, which is when a lease would lapse), and every session
  with blocks not yet published checkpointed at least every ``flush_s`` seconds, so a
  crash loses at most that much;
- **let go**: on delete (directory entry and store objects removed), on shutdown (last
  checkpoint published, lease released: another replica resumes it), or when another
  replica took the session (nothing is written any more).

Every call here blocks (Redis, the store, the model): the registry runs them in threads.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..cluster.settings import ClusterSettings
from .limits import SessionOptions
from .protocol import ProtocolError

if TYPE_CHECKING:
    from ..runtime.engine import StreamVLM
    from ..runtime.session import Session

log = logging.getLogger("streamvlm.server")

# how long creating a session waits for its first publish to the shared store
PUBLISH_TIMEOUT_S = 30.0


class SharedSessions:
    """Sessions leased from the directory at ``cluster.registry_url`` and mirrored to ``cluster.store_url``."""

    def __init__(self, engine: StreamVLM, cluster: ClusterSettings):
        from ..cluster.leases import LeaseKeeper, SessionDirectory
        from ..memory.objectstore import open_store

        self.engine = engine
        self.cluster = cluster
        self.replica = cluster.replica_id
        self.cache = Path(cluster.cache_dir)
        self.directory = SessionDirectory.from_settings(cluster)
        self.store = open_store(cluster.store_url)
        self._on_lost: Callable[[str], None] = lambda _id: None
        # the leases this replica holds, renewed in the keeper's thread
        self.leases = LeaseKeeper(self.directory, lambda lease: self._on_lost(lease.session_id))

    def start(self, on_lost: Callable[[str], None]) -> None:
        """Start renewing leases; ``on_lost(session_id)`` is called (from the keeper's thread)
        once for each session another replica took."""
        self._on_lost = on_lost
        self.leases.start()

    # ----- a session arrives ------------------------------------------------------

    def create(self, session_id: str, token: str, options: SessionOptions) -> Session:
        """Register ``session_id`` (409 ``session_exists`` if taken) and open it here."""
        from ..cluster.leases import token_hash
        from ..memory.mirror import SessionMirror

        record = {
            "memory": asdict(options.memory),
            "system_prompt": options.system_prompt,
            "persist": options.persist,
        }
        lease = self.directory.create(session_id, token_hash(token), record, self.replica)
        if lease is None:
            raise ProtocolError(
                "session_exists",
                f"a session named {session_id!r} exists in this cluster; pick another id or delete it",
                status=409,
            )
        session = None
        try:
            local = self._fresh_dir(session_id)
            mirror = SessionMirror(self.store, session_id, lease.fence, self.replica)
            session = self._open(options, local, mirror)
            # in the store before the client hears of it: any replica can resume it from now on
            disk = session.blocks.disk
            if not disk.wait_published(PUBLISH_TIMEOUT_S) or disk.published_version is None:
                raise ProtocolError(
                    "store_unavailable",
                    f"the shared store {self.cluster.store_url} did not take the new session; "
                    "check that every replica can write it, then retry",
                    status=503,
                )
        except BaseException:
            if session is not None:
                _stop_publishing(session, "creation failed")
                session.close()
            self.directory.delete(session_id, lease)
            raise
        self.leases.add(lease)
        return session

    def adopt(self, session_id: str, token: str) -> tuple[Session, SessionOptions]:
        """Take over a session another replica held (or that no replica holds): 404 if the
        cluster does not know it, 403 for a wrong token."""
        from ..cluster.leases import token_hash
        from ..memory.mirror import NoSuchSessionError, SessionMirror

        entry = self.directory.lookup(session_id)
        if entry is None:
            raise ProtocolError(
                "not_found", "no such session (it was deleted, expired or never existed)", status=404
            )
        if entry.token_hash != token_hash(token):
            raise ProtocolError("forbidden", "this token does not belong to this session", status=403)
        lease = self.directory.acquire(session_id, self.replica)
        local = self._fresh_dir(session_id)
        try:
            mirror = SessionMirror.restore(self.store, session_id, local, lease.fence, self.replica)
            session = self.engine.resume_session(local, mirror=mirror)
        except NoSuchSessionError:
            self.directory.release(lease)
            raise ProtocolError(
                "session_lost",
                f"session {session_id!r} is registered but the shared store holds none of it; delete it",
                status=410,
            ) from None
        except BaseException:
            self.directory.release(lease)
            raise
        if mirror.version is not None:
            self.directory.record_manifest(lease, mirror.version)
        self.leases.add(lease)
        record = entry.record
        options = SessionOptions(session.memory, record.get("system_prompt"), bool(record.get("persist")))
        log.info(
            "resumed session %s from the shared store (manifest %s, %d blocks, fence %d)",
            session_id,
            mirror.version,
            len(session.blocks.metas()),
            lease.fence,
        )
        return session, options

    def restart(self, session_id: str, old: Session, options: SessionOptions) -> Session:
        """A fresh memory for a session being reset: the old one stops publishing, its
        objects leave the store, and the new one is mirrored from version 1."""
        from ..memory.mirror import SessionMirror, delete_session

        _stop_publishing(old, "reset")
        lease = self.leases.get(session_id)
        delete_session(self.store, session_id, lease.fence, self.replica)
        local = self._fresh_dir(session_id, generation=True)
        return self._open(options, local, SessionMirror(self.store, session_id, lease.fence, self.replica))

    def _open(self, options: SessionOptions, local: Path, mirror) -> Session:
        return options.open(self.engine, replace(options.memory, disk_dir=str(local)), mirror=mirror)

    def _fresh_dir(self, session_id: str, generation: bool = False) -> Path:
        """An empty local directory for a session's copy (a previous copy here is stale)."""
        base = self.cache / session_id
        if generation:  # the old memory still has its directory open until it is closed
            n = 1
            while (self.cache / f"{session_id}.{n}").exists():
                n += 1
            base = self.cache / f"{session_id}.{n}"
        shutil.rmtree(base, ignore_errors=True)
        base.parent.mkdir(parents=True, exist_ok=True)
        return base

    # ----- while held -------------------------------------------------------------

    def holds(self, session_id: str) -> bool:
        """Whether this replica still holds the session's lease (asks the directory)."""
        lease = self.leases.get(session_id)
        return lease is not None and self.directory.holds(lease)

    def published(self, session_id: str, session: Session) -> None:
        """Record the manifest version the session's tier last published (for operators)."""
        lease = self.leases.get(session_id)
        version = getattr(session.blocks.disk, "published_version", None)
        if lease is not None and version is not None:
            self.directory.record_manifest(lease, version)

    def describe(self, session_id: str, session: Session) -> dict:
        """The ``shared`` part of a session's description: its lease and what the store holds."""
        lease = self.leases.get(session_id)
        disk = session.blocks.disk
        return {
            "replica": self.replica,
            "fence": lease.fence if lease is not None else None,
            "manifest_version": getattr(disk, "published_version", None),
            # blocks a crash of this replica would lose: not yet in a published checkpoint
            "unpublished_blocks": session.blocks.next_block_id - 1 - getattr(disk, "published_through", -1),
            "publish_s": round(getattr(disk, "publish_s", 0.0), 4),
        }

    # ----- a session leaves -------------------------------------------------------

    def taken(self, session_id: str, session: Session | None) -> None:
        """Another replica holds the session now: never write it again (call before closing it)."""
        self.leases.remove(session_id)
        if session is not None:
            _stop_publishing(session, "taken by another replica")

    def deleted(self, session_id: str) -> None:
        """The session was deleted (after it was closed): gone from the directory and the store."""
        from ..memory.mirror import delete_session

        lease = self.leases.remove(session_id)
        if lease is not None and self.directory.holds(lease):
            self.directory.delete(session_id, lease)
            delete_session(self.store, session_id, lease.fence, self.replica)
        self.remove_local(session_id)

    def delete_unheld(self, session_id: str) -> bool:
        """Delete a session this replica does not hold (the operator's): take its lease so
        its holder can write no more, then remove it from the directory and the store.
        False if the cluster does not know it."""
        from ..cluster.leases import NoSuchSessionError
        from ..memory.mirror import delete_session

        try:
            lease = self.directory.acquire(session_id, self.replica)
        except NoSuchSessionError:
            return False
        self.directory.delete(session_id, lease)
        delete_session(self.store, session_id, lease.fence, self.replica)
        return True

    def sweep(self, idle_s: float) -> list[str]:
        """Delete the sessions no replica has held for ``idle_s`` seconds (their replica died
        or shut down and their client never came back); returns their ids. Any replica may
        sweep: a session taken back meanwhile is only deleted by whoever gets the lease."""
        swept = []
        for session_id in self.directory.ids():
            if self.leases.get(session_id) is not None:
                continue
            entry = self.directory.lookup(session_id)
            if entry is not None and entry.unheld_s > idle_s and self.delete_unheld(session_id):
                swept.append(session_id)
        return swept

    def listing(self) -> list[dict]:
        """Every session of the cluster, from the directory: who holds it and what the store has."""
        entries = (self.directory.lookup(session_id) for session_id in self.directory.ids())
        return [
            {
                "id": entry.session_id,
                "owner": entry.owner,
                "lease_alive": entry.lease_alive,
                "fence": entry.fence,
                "manifest_version": entry.manifest_version,
                "created_at": entry.created_at,
            }
            for entry in entries
            if entry is not None
        ]

    def released(self, session_id: str) -> None:
        """The session was closed here and published (shutdown): the lease is free for another replica."""
        lease = self.leases.remove(session_id)
        if lease is not None:
            self.directory.release(lease)
        self.remove_local(session_id)

    def remove_local(self, session_id: str) -> None:
        """Delete this replica's copies of the session (after it was closed here)."""
        for path in [self.cache / session_id, *self.cache.glob(f"{session_id}.*")]:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self.leases.stop()
        self.directory.close()


def _stop_publishing(session: Session, why: str) -> None:
    """Make the session's shared tier write nothing more to the store (its local copy goes on)."""
    disk = session.blocks.disk
    if disk is not None and hasattr(disk, "stop_publishing"):
        disk.stop_publishing(why)
