"""The sessions a server holds: ids, tokens, counters, and their life cycle.

Each ``ServedSession`` wraps one ``Session`` with what the server adds: an unguessable
id, its own bearer token, frame counters that survive a reset, the frame-rate bucket,
and the stream connection feeding it (at most one at a time, so frame times from two
sources never interleave).

A session ends in one of three ways, each freeing its slot: its client sends ``close``
on the websocket (unless it was created with ``persist``), anyone holding its token or
the operator's API key deletes it, or it sits with no connection and no request for
``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..config import MemoryConfig
from .limits import FrameRateLimiter, SessionOptions
from .metrics import Metrics, SessionSample
from .protocol import ProtocolError
from .settings import ServerSettings
from .shared_sessions import SharedSessions

log = logging.getLogger("streamvlm.server")

if TYPE_CHECKING:
    from ..runtime.engine import StreamVLM
    from ..runtime.session import Session


@dataclass
class FrameCounts:
    """Frame messages of one session, over its whole life (resets included).

    Every received frame is in exactly one of: rejected (invalid, got an ``error``),
    dropped by rate, dropped by the encoder queue, encoded, or still pending (being
    decoded, waiting in the queue or in a partly filled chunk).
    """

    received: int = 0
    rejected: int = 0
    dropped_rate: int = 0
    accepted: int = 0  # handed to the session's encoder queue
    retired_encoded: int = 0  # encoded by memories a reset replaced
    retired_dropped_queue: int = 0


def sample_session(session: Session, device_lock) -> tuple[SessionSample, dict]:
    """A session's stats, read under the device lock (the block store is only consistent
    there): run it off the event loop."""
    with device_lock.for_answer():  # a short read someone waits for: not behind every chunk
        stats = session.stats()
    sample = SessionSample(
        frames_encoded=stats.frames_encoded,
        frames_dropped_queue=stats.frames_dropped,
        queue_depth=stats.queue_depth,
        bytes_per_tier=dict(stats.bytes_per_tier),
    )
    return sample, stats.to_dict()


def queue_counts(session: Session | None) -> tuple[int, int]:
    """(frames the encoder queue dropped, frames waiting in it); (0, 0) for a deleted session.

    ``Session.queue_counts``, not ``Session.stats()``: stats walks the block store and
    needs the device lock, and an ack is sent for every frame.
    """
    return session.queue_counts() if session is not None else (0, 0)


class ServedSession:
    """One session as the server holds it."""

    def __init__(
        self,
        session: Session,
        options: SessionOptions,
        settings: ServerSettings,
        *,
        session_id: str,
        token: str,
    ):
        self.id = session_id  # the name its client gave, else ``new_session_id()``
        self.token = token
        self.session: Session | None = session  # None once deleted
        self.options = options  # what a reset opens the session with again
        self.memory: MemoryConfig = options.memory
        self.persist = options.persist  # kept after its client's ``close``
        self.created_at = time.time()
        self.last_active = time.monotonic()
        self.limiter = FrameRateLimiter(settings.max_fps)
        self.frames = FrameCounts()
        self.answers = 0
        self.resets = 0
        self.last_t: float | None = None  # time of the last frame accepted for order checks
        self.connection: Any = None  # the StreamConnection feeding it, if any
        self.published_at = time.monotonic()  # in a cluster: when its blocks last reached the store

    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def idle_s(self) -> float:
        """Seconds since the last frame, message or request (0 while a client streams)."""
        return 0.0 if self.connection is not None else time.monotonic() - self.last_active

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    def counts(self) -> dict[str, int]:
        """Frame counters as sent in ``ack`` (cheap: no lock, see ``queue_counts``)."""
        f = self.frames
        dropped_queue, depth = queue_counts(self.session)
        dropped_queue += f.retired_dropped_queue
        encoded = f.retired_encoded + (self.session.state.frames_encoded if self.session is not None else 0)
        return {
            "received": f.received,
            "accepted": f.accepted,
            "encoded": encoded,
            "dropped": f.dropped_rate + dropped_queue,
            "dropped_rate": f.dropped_rate,
            "dropped_queue": dropped_queue,
            "rejected": f.rejected,
            # everything not settled yet: being decoded, queued, or in a partly filled chunk
            "pending": f.received - f.rejected - f.dropped_rate - dropped_queue - encoded,
            "queue_depth": depth,
        }

    def summary(self, model: str) -> dict[str, Any]:
        """One entry of the operator's ``GET /v1/sessions`` (cheap: no lock, no token)."""
        idle = self.idle_s
        return {
            "id": self.id,
            "model": model,
            "created_at": self.created_at,
            "last_active_at": time.time() - idle,
            "idle_s": idle,
            "streaming": self.connection is not None,
            "persist": self.persist,
            "frames": self.counts(),
            "answers": self.answers,
        }

    def describe(self, stats: dict, model: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of ``GET /v1/sessions/{id}``; ``model`` is the ``model`` and
        ``model_card`` fields every description of the server carries."""
        return {
            "id": self.id,
            **model,
            "created_at": self.created_at,
            "streaming": self.connection is not None,
            "persist": self.persist,
            "frames": self.counts(),
            "answers": self.answers,
            "resets": self.resets,
            "memory": asdict(self.memory),
            "stats": stats,
        }


class SessionRegistry:
    """Creates, finds, authorises, resets and closes the server's sessions.

    Called on the event loop; model work (encoding the sinks of a new session, closing
    one, reading stats) runs in threads.
    """

    def __init__(self, engine: StreamVLM, settings: ServerSettings, metrics: Metrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self._sessions: dict[str, ServedSession] = {}
        self._reserved = 0  # creations in flight: they count against max_sessions too
        # in a cluster, names, leases and the shared store (None: a single server)
        self.shared = SharedSessions(engine, settings.cluster) if settings.cluster is not None else None
        self._adopting: dict[str, asyncio.Future] = {}  # resumes in flight, by session id

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[ServedSession]:
        return list(self._sessions.values())

    @property
    def connections(self) -> int:
        return sum(s.connection is not None for s in self._sessions.values())

    def reserve(self) -> Callable[[], None]:
        """Hold a session slot (503 ``too_many_sessions`` when none is free); returns its release.

        A session being created holds one, and so does the throwaway session a chat
        completion builds for an inline video.
        """
        if len(self._sessions) + self._reserved >= self.settings.max_sessions:
            raise ProtocolError(
                "too_many_sessions",
                f"this server holds {self.settings.max_sessions} sessions at most; delete one or retry later",
                status=503,
            )
        self._reserved += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._reserved -= 1

        return release

    async def create(self, options: SessionOptions) -> ServedSession:
        """Open a session; 503 ``too_many_sessions`` at the limit, 409 ``session_exists``
        when the id its client gave is taken (in a cluster: by any replica)."""
        if options.session_id is not None and options.session_id in self._sessions:
            raise ProtocolError(
                "session_exists", f"a session named {options.session_id!r} exists", status=409
            )
        release = self.reserve()
        session_id = options.session_id or new_session_id()
        token = secrets.token_urlsafe(32)
        try:
            if self.shared is not None:
                session = await asyncio.to_thread(self.shared.create, session_id, token, options)
            else:
                session = await asyncio.to_thread(options.open, self.engine)
        finally:
            release()
        served = ServedSession(session, options, self.settings, session_id=session_id, token=token)
        self._hold(served)
        self.metrics.sessions_created += 1
        return served

    def _hold(self, served: ServedSession) -> None:
        self._sessions[served.id] = served
        if self.shared is not None:  # a publish refused by the store: another replica took it
            loop = asyncio.get_running_loop()
            disk = served.session.blocks.disk
            disk.on_fenced = lambda _e, i=served.id: loop.call_soon_threadsafe(self._taken_soon, i)

    async def obtain(self, session_id: str, authorization: str | None) -> ServedSession:
        """``authorize``, and in a cluster resume a session held elsewhere (or nowhere) here
        first: its token is checked against the session directory, then it is adopted."""
        if self.shared is None:
            return self.authorize(session_id, authorization)
        # Held here, but maybe no longer ours: another replica may have taken it since the
        # keeper last renewed. The client came here, so it is resumed here again (one
        # Redis round trip per request or connection, ~0.1 ms).
        if session_id in self._sessions:
            if await asyncio.to_thread(self.shared.holds, session_id):
                return self.authorize(session_id, authorization)
            await self.taken(session_id)
        token = bearer_token(authorization)
        if token is None:
            return self.authorize(session_id, authorization)  # the 401
        pending = self._adopting.get(session_id)
        if pending is None:
            pending = asyncio.ensure_future(self._adopt(session_id, token))
            self._adopting[session_id] = pending
            pending.add_done_callback(lambda _f: self._adopting.pop(session_id, None))
        await asyncio.shield(pending)
        return self.authorize(session_id, authorization)

    async def _adopt(self, session_id: str, token: str) -> None:
        release = self.reserve()
        try:
            session, options = await asyncio.to_thread(self.shared.adopt, session_id, token)
        finally:
            release()
        self._hold(ServedSession(session, options, self.settings, session_id=session_id, token=token))
        self.metrics.sessions_resumed += 1

    def knows(self, token: str) -> bool:
        """Whether ``token`` is some open session's (every one compared: constant time per session)."""
        return sum(s.matches(token) for s in self._sessions.values()) > 0

    def held(self, session_id: str) -> ServedSession | None:
        """The session if this server holds it (no checks)."""
        return self._sessions.get(session_id)

    async def delete_elsewhere(self, session_id: str) -> dict[str, Any]:
        """In a cluster, the operator deletes a session this replica does not hold: its
        lease is taken (its holder, if alive, lets go), then it leaves the directory and
        the store. 404 if the cluster does not know it."""
        if not await asyncio.to_thread(self.shared.delete_unheld, session_id):
            raise ProtocolError(
                "not_found", "no such session (it was deleted, expired or never existed)", status=404
            )
        self.metrics.sessions_ended["operator"] += 1
        return {"id": session_id, "deleted": True}

    def find(self, session_id: str) -> ServedSession:
        """The open session ``session_id`` (for the operator, who holds no token); 404 if none."""
        served = self._sessions.get(session_id)
        if served is None:
            raise ProtocolError(
                "not_found", "no such session (it was deleted, expired or never existed)", status=404
            )
        return served

    def authorize(self, session_id: str, authorization: str | None) -> ServedSession:
        """The session if ``authorization`` carries its token: 401 without a bearer
        token, 404 for an unknown session, 403 for another session's token."""
        token = bearer_token(authorization)
        if token is None:
            raise ProtocolError(
                "unauthorized", "send this session's token as 'Authorization: Bearer <token>'", status=401
            )
        served = self.find(session_id)
        if not served.matches(token):
            raise ProtocolError("forbidden", "this token does not belong to this session", status=403)
        served.touch()
        return served

    async def reset(self, served: ServedSession) -> None:
        """Replace the session's memory with a fresh one with the same options.

        The old memory is closed after the swap (its queued frames are encoded into it),
        and answers already under way keep reading it, so they answer what was asked.
        """
        if self.shared is not None:
            fresh = await asyncio.to_thread(self.shared.restart, served.id, served.session, served.options)
        else:
            fresh = await asyncio.to_thread(served.options.open, self.engine)
        old, served.session = served.session, fresh
        served.last_t = None
        served.resets += 1
        await self._retire(served, old)

    async def delete(self, session_id: str, reason: str = "delete") -> dict[str, Any]:
        """Close a session (its stream connection first) and return its last counts and stats.

        ``reason`` labels ``streamvlm_sessions_ended_total``: ``delete`` (its token),
        ``operator`` (the API key), ``idle``, ``shutdown``; ``close`` is the client's own,
        in ``closed_by_client``.
        """
        served = self._sessions.pop(session_id)
        self.metrics.sessions_ended[reason] += 1
        if served.connection is not None:
            await served.connection.kick("session_deleted", "this session was deleted")
        stats = await self._retire(served, served.session)
        if self.shared is not None:  # on shutdown another replica takes it over; else it is gone
            let_go = self.shared.released if reason == "shutdown" else self.shared.deleted
            await asyncio.to_thread(let_go, session_id)
        return {
            "id": served.id,
            "deleted": reason != "shutdown" or self.shared is None,
            "frames": served.counts(),
            "stats": stats,
        }

    async def closed_by_client(self, served: ServedSession) -> bool:
        """Its client sent ``close`` (every frame is encoded by now): delete the session
        unless it asked to persist. True when it was deleted.

        Called by the connection itself, which closes its own socket: nothing is kicked.
        The slot is free before this returns, so a client that waits for the close sees
        the server without it.
        """
        if served.persist or self._sessions.get(served.id) is not served:  # kept, or deleted meanwhile
            served.touch()
            return False
        del self._sessions[served.id]
        self.metrics.sessions_ended["close"] += 1
        await self._retire(served, served.session)
        if self.shared is not None:
            await asyncio.to_thread(self.shared.deleted, served.id)
        return True

    async def stats(self, served: ServedSession) -> dict:
        """``Session.stats()`` as a dict, read off the event loop."""
        _, stats = await asyncio.to_thread(sample_session, served.session, self.engine.device_lock)
        return stats

    async def _retire(self, served: ServedSession, session: Session) -> dict:
        """Close ``session`` (its queued frames are encoded) and keep its counts in ``served``."""

        def close() -> tuple[SessionSample, dict]:
            session.close()
            return sample_session(session, self.engine.device_lock)

        sample, stats = await asyncio.to_thread(close)
        # back on the event loop, where counts are read: moved in one step, never counted twice
        served.frames.retired_encoded += sample.frames_encoded
        served.frames.retired_dropped_queue += sample.frames_dropped_queue
        self.metrics.retire(sample)
        if served.session is session:  # deleted, not reset: the retired counts hold everything
            served.session = None
        return stats

    async def samples(self) -> list[SessionSample]:
        """Current samples of every open session, for ``/metrics``."""
        live = [s.session for s in self.all() if s.session is not None]
        pairs = await asyncio.to_thread(lambda: [sample_session(x, self.engine.device_lock) for x in live])
        return [sample for sample, _ in pairs]

    async def expire_idle(self) -> list[str]:
        """Delete sessions with no connection and no request for ``idle_timeout_s``; in a
        cluster also those no replica has held for that long (``SharedSessions.sweep``)."""
        if self.settings.idle_timeout_s is None:
            return []
        now = time.monotonic()
        idle = [
            s.id
            for s in self.all()
            if s.connection is None and now - s.last_active > self.settings.idle_timeout_s
        ]
        for session_id in idle:
            if session_id in self._sessions:
                await self.delete(session_id, "idle")
        if self.shared is not None:  # and the cluster's sessions that no replica holds
            swept = await asyncio.to_thread(self.shared.sweep, self.settings.idle_timeout_s)
            self.metrics.sessions_ended["idle"] += len(swept)
            idle += swept
        return idle

    # ----- a cluster's sessions --------------------------------------------------

    def _taken_soon(self, session_id: str) -> None:
        """From another thread's callback: a lease was lost or the store refused a publish."""
        log.warning("session %s was taken over by another replica", session_id)
        asyncio.ensure_future(self.taken(session_id))

    async def taken(self, session_id: str) -> None:
        """Another replica took the session: stop serving it here without writing it again."""
        served = self._sessions.pop(session_id, None)
        if served is None:
            return
        self.metrics.sessions_ended["moved"] += 1
        self.shared.taken(session_id, served.session)
        if served.connection is not None:
            await served.connection.kick(
                "session_moved", "another replica serves this session now; reconnect to continue"
            )
        await self._retire(served, served.session)
        await asyncio.to_thread(self.shared.remove_local, session_id)

    def start_shared(self) -> None:
        """In a cluster, on the event loop: start renewing leases; a session whose lease
        another replica took is let go of here."""
        loop = asyncio.get_running_loop()
        self.shared.start(lambda session_id: loop.call_soon_threadsafe(self._taken_soon, session_id))

    async def publish_due(self) -> None:
        """In a cluster: publish every session with blocks not yet in the store once
        ``flush_s`` has passed since it last was."""
        due = time.monotonic() - self.settings.cluster.flush_s
        for served in self.all():
            session = served.session
            if session is None or served.published_at > due:
                continue
            if session.blocks.blocks_since_checkpoint:
                await asyncio.to_thread(session.checkpoint, None)
                await asyncio.to_thread(self.shared.published, served.id, session)
            served.published_at = time.monotonic()

    async def close_all(self) -> None:
        for session_id in list(self._sessions):
            await self.delete(session_id, "shutdown")


def new_session_id() -> str:
    """A server-chosen session id: 128 random bits, safe in a URL."""
    return secrets.token_urlsafe(16)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
