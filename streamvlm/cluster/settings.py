"""Where a replica finds the cluster's shared state: ``ClusterSettings``."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass

from ..errors import ConfigError

STORE_SCHEMES = ("file://", "s3://")


@dataclass(frozen=True)
class ClusterSettings:
    """A server replica's place in a cluster (``streamvlm serve --ray``).

    store_url:
        The shared long-term tier every replica reaches: ``file:///mnt/shared/streamvlm``
        (a shared directory, e.g. an NFS mount) or ``s3://bucket/prefix`` (an
        S3-compatible object store; endpoint from ``?endpoint_url=`` or ``AWS_ENDPOINT_URL``).
    registry_url:
        The session directory with its leases: ``redis://host:port/db``.
    replica_id:
        This replica's name in the directory (``None``: host name and process id).
    cache_dir:
        Local directory for the copies of the sessions this replica holds (``None``: one
        under the system's temporary directory). Never shared: each replica has its own.
    lease_s:
        A lease not renewed for this long is expired; replicas renew every third of it.
    flush_s:
        A session with blocks not yet in the shared store is checkpointed and published at
        least this often (besides every ``MemoryConfig.disk_flush_blocks`` blocks): what a
        replica's crash can lose of what it had encoded.
    """

    store_url: str
    registry_url: str
    replica_id: str | None = None
    cache_dir: str | None = None
    lease_s: float = 10.0
    flush_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.store_url.startswith(STORE_SCHEMES):
            raise ConfigError(
                f"--store {self.store_url!r}: use file:///path/to/shared/dir or s3://bucket/prefix"
            )
        if not self.registry_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--registry {self.registry_url!r}: use redis://host:port/db")
        for name in ("lease_s", "flush_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive seconds, got {getattr(self, name)}")
        if self.replica_id is None:
            object.__setattr__(self, "replica_id", f"{socket.gethostname()}-{os.getpid()}")
        if self.cache_dir is None:
            cache = os.path.join(tempfile.gettempdir(), "streamvlm-cluster", self.replica_id)
            object.__setattr__(self, "cache_dir", cache)
