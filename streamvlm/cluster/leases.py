"""The session directory in Redis: who owns each session, under which lease.

Every replica of a cluster serves any session it is routed to. The directory says who
holds each one: a *lease* names the owner and carries a *fence*, a per-session number
that grows by one at every takeover. A replica routed a session it does not hold takes
the lease (``acquire`` always succeeds: the client was routed here, so the old owner is
gone or the ring moved) and resumes the session from the shared store; the old owner's
fence is now older, so the directory refuses its renewals and manifest records, and the
store refuses its writes.

Keys, under a namespace (``streamvlm`` unless told):

- ``<ns>:session:<id>``: a hash: ``token_hash``, ``record`` (JSON), ``created_at``,
  ``owner`` and ``lease_expires_at`` (absent while nobody holds it), ``manifest_version``.
- ``<ns>:fence:<id>``: the session's fence counter, the one place its fence is kept. It
  outlives ``delete``: a session re-created under the same id continues the count, so a
  replica still holding a lease from the id's previous life can never match a new fence.
  The price is one small key per id ever used (ids are random, so few ever come back).
- ``<ns>:sessions``: the set of registered ids.

Every check-and-set runs as one Lua script, so Redis executes it atomically; times are
the Redis server's clock (``TIME`` inside the script), never a replica's.

*Expiry is advice, the fence is the guard.* A lease that was not renewed for ``lease_s``
is expired (``SessionEntry.lease_alive`` is false: its owner is presumed gone), but it
stays the record of the last owner, and that owner may still renew it: only
``acquire``, ``release`` and ``delete`` end a lease. So a replica that paused longer than
``lease_s`` carries on if nobody took its sessions, and stops if someone did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigError, StreamVLMError

if TYPE_CHECKING:
    from .settings import ClusterSettings

log = logging.getLogger(__name__)

# A directory that cannot be reached should fail a replica's start within a second or two,
# not hang it; a command that does not answer in COMMAND_TIMEOUT_S is as good as lost.
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 5.0

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class RegistryUnavailableError(StreamVLMError):
    """The session directory (Redis) cannot be reached or its URL is not valid."""


class NoSuchSessionError(StreamVLMError, KeyError):
    """The session id is not registered in the directory."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def token_hash(token: str) -> str:
    """The SHA-256 hex digest of a session's bearer token: what the directory stores, so
    Redis never holds a token that could be replayed."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Lease:
    """The right to write one session, held by one replica."""

    session_id: str
    owner: str  # the replica id holding it
    fence: int  # fencing token: strictly increasing per session, one more at every takeover


@dataclass(frozen=True)
class SessionEntry:
    """A session's directory entry as read by ``SessionDirectory.lookup``."""

    session_id: str
    token_hash: str  # SHA-256 hex of the session's bearer token (``token_hash``)
    record: dict  # what the creating replica stored about the session (JSON-able)
    owner: str | None  # replica holding (or last holding, if expired) the lease; None once released
    fence: int  # fence of the latest lease taken on this session
    lease_expires_at: float | None  # Redis server time (epoch seconds) the lease lapses; None if released
    manifest_version: int | None  # last manifest version the holder recorded; None before any
    created_at: float  # Redis server time the session was registered
    checked_at: float = field(default=0.0, repr=False)  # Redis server time of the lookup

    @property
    def lease_alive(self) -> bool:
        """Whether an owner held an unexpired lease when the entry was read (server clock)."""
        return (
            self.owner is not None
            and self.lease_expires_at is not None
            and self.lease_expires_at > self.checked_at
        )

    @property
    def unheld_s(self) -> float:
        """Seconds no replica has held the session (its lease expired or was released), as
        of the read; 0 while a lease is alive."""
        if self.lease_alive or self.lease_expires_at is None:
            return 0.0
        return max(0.0, self.checked_at - self.lease_expires_at)


# --- Lua scripts. KEYS[1] = the session hash, KEYS[2] = its fence counter. ----------------

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# Whether ARGV[1] (owner) with ARGV[2] (fence) is the lease currently held.
_HELD = """
local function held()
    return redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2]
end
"""

# KEYS[3] = the id set. ARGV: owner, lease_s, session_id, token_hash, record JSON -> fence or false
_CREATE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'token_hash', ARGV[4], 'record', ARGV[5], 'owner', ARGV[1],
           'lease_expires_at', string.format('%.6f', now + tonumber(ARGV[2])),
           'created_at', string.format('%.6f', now))
redis.call('SADD', KEYS[3], ARGV[3])
return fence
"""
)

# ARGV: owner, lease_s -> the new fence, or false if the session is not registered
_ACQUIRE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_expires_at', string.format('%.6f', now + tonumber(ARGV[2])))
return fence
"""
)

# ARGV: owner, fence, lease_s -> 1 if renewed, 0 if no longer held
_RENEW = (
    _NOW
    + _HELD
    + """
if not held() then return 0 end
redis.call('HSET', KEYS[1], 'lease_expires_at', string.format('%.6f', now + tonumber(ARGV[3])))
return 1
"""
)

# ARGV: owner, fence -> 1 if held, else 0
_HOLDS = (
    _HELD
    + """
if held() then return 1 end
return 0
"""
)

# ARGV: owner, fence, version -> 1 if recorded, 0 if no longer held
_RECORD_MANIFEST = (
    _HELD
    + """
if not held() then return 0 end
redis.call('HSET', KEYS[1], 'manifest_version', ARGV[3])
return 1
"""
)

# ARGV: owner, fence -> 1 if released, 0 if no longer held
_RELEASE = (
    _NOW
    + _HELD
    + """
if not held() then return 0 end
redis.call('HDEL', KEYS[1], 'owner')
-- the lease ends now: how long a session went unheld is what sweeping abandoned ones reads
redis.call('HSET', KEYS[1], 'lease_expires_at', string.format('%.6f', now))
return 1
"""
)

# KEYS[3] = the id set. ARGV: owner, fence (both '' for an unconditional delete), session_id
# -> 1 if deleted, 0 if not registered or not held. The fence counter stays (module docstring).
_DELETE = (
    _HELD
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' and not held() then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"""
)


class SessionDirectory:
    """The cluster's session directory in Redis: registrations, leases, manifest versions.

    ``url`` is ``redis://host:port/db`` (or ``rediss://``, ``unix://``); the server is
    pinged at construction, and any failure to reach it, then or later, raises
    ``RegistryUnavailableError``. Safe to share between threads (a pool of connections).
    """

    def __init__(self, url: str, *, namespace: str = "streamvlm", lease_s: float = 10.0):
        # redis comes with the cluster extra: imported only when a directory is made
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not lease_s > 0:
            raise ConfigError(f"lease_s must be positive seconds, got {lease_s}")
        self.url = url
        self.namespace = namespace
        self.lease_s = float(lease_s)
        # InvalidResponse: something answered that is not Redis (a proxy, an HTTP port)
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)
        try:
            # No retries: a script retried after a lost reply would run twice (a create
            # that succeeded would then answer "id exists"); callers see the failure instead.
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as e:
            raise RegistryUnavailableError(
                f"session directory URL {url!r} is not valid ({e}): use redis://host:port/db"
            ) from None
        scripts = {
            "create": _CREATE,
            "acquire": _ACQUIRE,
            "renew": _RENEW,
            "holds": _HOLDS,
            "record_manifest": _RECORD_MANIFEST,
            "release": _RELEASE,
            "delete": _DELETE,
        }
        self._scripts = {name: self._client.register_script(lua) for name, lua in scripts.items()}
        try:
            self._call(self._client.ping)
        except RegistryUnavailableError:
            self._client.close()
            raise

    @classmethod
    def from_settings(cls, settings: ClusterSettings) -> SessionDirectory:
        """The directory a replica with these ``ClusterSettings`` uses."""
        return cls(settings.registry_url, lease_s=settings.lease_s)

    # --- keys -------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return f"{self.namespace}:session:{session_id}"

    def _fence_key(self, session_id: str) -> str:
        return f"{self.namespace}:fence:{session_id}"

    @property
    def _ids_key(self) -> str:
        return f"{self.namespace}:sessions"

    # --- calls ------------------------------------------------------------------------

    def _call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` with Redis' connection failures as one-line errors."""
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RegistryUnavailableError(
                f"session directory {self.url} unreachable or not Redis ({reason}): start redis-server there "
                "or point --registry at a running one"
            ) from None

    def _run(self, script: str, session_id: str, args: Iterable, *, with_ids: bool = False):
        keys = [self._session_key(session_id), self._fence_key(session_id)]
        if with_ids:
            keys.append(self._ids_key)
        return self._call(self._scripts[script], keys=keys, args=list(args))

    def _lease_script(self, script: str, lease: Lease, *extra) -> bool:
        return self._run(script, lease.session_id, (lease.owner, lease.fence, *extra)) == 1

    # --- the API ----------------------------------------------------------------------

    def create(self, session_id: str, token_hash: str, record: dict, owner: str) -> Lease | None:
        """Register a new session and give ``owner`` its first lease, in one step.

        ``token_hash`` is ``token_hash(token)``, never the token. Returns the lease
        (fence 1 for an id never used before; one more than the id's last fence
        otherwise), or None if the id is already registered.
        """
        _check_owner(owner)
        if not _SHA256_HEX.fullmatch(token_hash):
            raise ValueError("token_hash must be token_hash(token) (SHA-256 hex), never the token itself")
        args = (owner, self.lease_s, session_id, token_hash, json.dumps(record))
        fence = self._run("create", session_id, args, with_ids=True)
        return None if fence is None else Lease(session_id, owner, int(fence))

    def lookup(self, session_id: str) -> SessionEntry | None:
        """The session's entry, read atomically, or None if it is not registered."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(self._session_key(session_id))
        pipe.get(self._fence_key(session_id))
        pipe.time()
        fields, fence, (seconds, micros) = self._call(pipe.execute)
        if not fields:
            return None
        expires = fields.get("lease_expires_at")
        version = fields.get("manifest_version")
        return SessionEntry(
            session_id=session_id,
            token_hash=fields["token_hash"],
            record=json.loads(fields["record"]),
            owner=fields.get("owner"),
            fence=int(fence),
            lease_expires_at=None if expires is None else float(expires),
            manifest_version=None if version is None else int(version),
            created_at=float(fields["created_at"]),
            checked_at=seconds + micros / 1e6,
        )

    def acquire(self, session_id: str, owner: str) -> Lease:
        """Take the session's lease for ``owner``, from whoever held it, expired or not.

        The new fence is one more than the last, so the previous holder's lease stops
        working at once. Raises ``NoSuchSessionError`` if the id is not registered.
        """
        _check_owner(owner)
        fence = self._run("acquire", session_id, (owner, self.lease_s))
        if fence is None:
            raise NoSuchSessionError(f"session {session_id!r} is not in the directory: create it first")
        return Lease(session_id, owner, int(fence))

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by ``lease_s`` from now if it is still held with this fence
        (even if it expired meanwhile); False if it was taken, released or deleted."""
        return self._lease_script("renew", lease, self.lease_s)

    def holds(self, lease: Lease) -> bool:
        """Whether this lease is still the session's current one (expired or not)."""
        return self._lease_script("holds", lease)

    def record_manifest(self, lease: Lease, version: int) -> bool:
        """Record the session's latest manifest version, only while ``lease`` is held."""
        return self._lease_script("record_manifest", lease, int(version))

    def release(self, lease: Lease) -> bool:
        """Give the lease up (the session stays registered, with no owner, its lease ended
        now), only if held."""
        return self._lease_script("release", lease)

    def delete(self, session_id: str, lease: Lease | None = None) -> bool:
        """Unregister the session. With ``lease``, only while that lease is held; without,
        whoever holds it (an operator's delete). False if nothing was deleted."""
        if lease is not None and lease.session_id != session_id:
            raise ValueError(f"lease is for session {lease.session_id!r}, not {session_id!r}")
        owner, fence = (lease.owner, lease.fence) if lease is not None else ("", "")
        return self._run("delete", session_id, (owner, fence, session_id), with_ids=True) == 1

    def ids(self) -> list[str]:
        """Every registered session id, sorted."""
        return sorted(self._call(self._client.smembers, self._ids_key))

    def owned_by(self, owner: str) -> list[str]:
        """The ids whose entry names ``owner`` as holder, expired or not, sorted.

        One pass over the registered sessions (owners live in each session's hash only,
        so there is no index to keep consistent); not a snapshot across sessions.
        """
        ids = self.ids()
        pipe = self._client.pipeline(transaction=False)
        for session_id in ids:
            pipe.hget(self._session_key(session_id), "owner")
        owners = self._call(pipe.execute)
        return [session_id for session_id, held_by in zip(ids, owners, strict=True) if held_by == owner]

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()

    def __enter__(self) -> SessionDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_owner(owner: str) -> None:
    # an empty owner would read as "released" (the delete script's "no lease" too)
    if not owner:
        raise ValueError("owner must be a non-empty replica id")


class LeaseKeeper:
    """Keeps a replica's leases alive: renews each every ``interval_s`` (a third of the
    directory's ``lease_s`` unless told) and calls ``on_lost(lease)`` once for a lease
    that was taken, released or deleted, so the server stops writing that session at once.

    A daemon thread, not an asyncio task: the Redis calls block, and a thread keeps
    renewing while the event loop (or the GIL-holding model step it waits on) is busy,
    which is exactly when a lease would otherwise lapse. ``on_lost`` runs on the keeper's
    thread; an asyncio server hands it to its loop with ``loop.call_soon_threadsafe``.
    While Redis is unreachable the keeper logs and keeps the leases: they are not known
    lost, and the fence still guards every write.
    """

    def __init__(
        self,
        directory: SessionDirectory,
        on_lost: Callable[[Lease], None],
        *,
        interval_s: float | None = None,
    ):
        self.directory = directory
        self.on_lost = on_lost
        self.interval_s = directory.lease_s / 3 if interval_s is None else interval_s
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        """Keep ``lease`` alive, in place of any lease kept for the same session."""
        with self._lock:
            self._leases[lease.session_id] = lease

    def remove(self, session_id: str) -> Lease | None:
        """Stop renewing the session's lease (it is not reported lost); the lease or None."""
        with self._lock:
            return self._leases.pop(session_id, None)

    def get(self, session_id: str) -> Lease | None:
        """The lease kept for ``session_id``, if any."""
        with self._lock:
            return self._leases.get(session_id)

    def leases(self) -> list[Lease]:
        """The leases being kept."""
        with self._lock:
            return list(self._leases.values())

    def renew_once(self) -> list[Lease]:
        """One pass: renew every kept lease; drop and report (``on_lost``) those that are
        no longer held. Returns the leases lost in this pass."""
        lost = []
        for lease in self.leases():
            try:
                held = self.directory.renew(lease)
            except RegistryUnavailableError as e:
                log.warning("could not renew the lease of session %s: %s", lease.session_id, e)
                continue
            if held:
                continue
            with self._lock:
                # removed or replaced (re-acquired) while we renewed: not ours to report
                if self._leases.get(lease.session_id) != lease:
                    continue
                del self._leases[lease.session_id]
            lost.append(lease)
            try:
                self.on_lost(lease)
            except Exception:
                log.exception("on_lost failed for session %s", lease.session_id)
        return lost

    def start(self) -> LeaseKeeper:
        """Start renewing in a daemon thread; returns self."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="streamvlm-lease-keeper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (the leases stay held until they expire or are released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew_once()
            except Exception:  # a bug or a Redis error reply must not end the renewals silently
                log.exception("lease renewal pass failed")

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
