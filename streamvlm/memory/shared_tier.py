"""The long-term tier shared by a cluster's replicas: the disk tier, mirrored to a store.

``SharedDiskTier`` is a ``DiskTier`` over a replica's local copy of the session directory
(its own cache: appends, memory-mapped reads and crash recovery stay local and fast), and
a ``SessionMirror`` (``mirror.py``) that publishes the directory to a store every replica
reaches (``file://`` on a shared mount, ``s3://``) each time a checkpoint leaves it
consistent. Any replica can then restore the session from the store and resume it.

Publishing carries the writer's fencing token: once another replica has taken the
session over (a newer token), the store refuses this one's manifests. The tier then stops
publishing and tells its owner through ``on_fenced``, once; its local copy goes on
working, so the session that was running is not broken mid-question, but nothing it does
reaches the store again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import StreamVLMError
from .codec import BlockCodec
from .disk import DiskLog
from .disk_tier import DiskTier

log = logging.getLogger(__name__)


class SharedDiskTier(DiskTier):
    """``DiskTier`` whose session directory is published through ``mirror`` at every checkpoint.

    ``mirror`` is a ``mirror.SessionMirror`` (anything with ``publish(directory) -> version``
    that raises ``mirror.FencedError`` once another writer took over). ``on_fenced(error)``
    is called once, from the thread that checkpointed, when that happens.
    """

    def __init__(
        self,
        log_: DiskLog,
        codec: BlockCodec,
        mirror,
        *,
        on_codec_state: Callable[[BlockCodec], None] | None = None,
        on_fenced: Callable[[Exception], None] | None = None,
        name: str = "disk",
    ):
        super().__init__(log_, codec, on_codec_state=on_codec_state, name=name)
        self.mirror = mirror
        self.on_fenced = on_fenced
        self.fenced: Exception | None = None  # why this replica may no longer publish
        self.published_version: int | None = None
        self.publish_s = 0.0  # seconds spent publishing, over the tier's life
        self.publish_failures = 0  # publishes the store did not take (retried at the next checkpoint)

    def checkpointed(self) -> None:
        from .mirror import FencedError  # the mirror's module brings the store clients

        if self.fenced is not None:
            return
        start = time.perf_counter()
        try:
            self.published_version = self.mirror.publish(self.log.directory)
        except FencedError as e:
            self.fenced = e
            log.warning("session %s: %s; this replica no longer writes it", self.log.directory.name, e)
            if self.on_fenced is not None:
                self.on_fenced(e)
        except (StreamVLMError, OSError) as e:
            # The store is unreachable or refused the upload: the blocks stay safe in the
            # local copy and the next checkpoint publishes them (a crash before then loses
            # them from the cluster's view). The session goes on either way.
            self.publish_failures += 1
            log.warning("session %s: publishing to the shared store failed: %s", self.log.directory.name, e)
        finally:
            self.publish_s += time.perf_counter() - start
