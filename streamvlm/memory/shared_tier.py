"""The long-term tier shared by a cluster's replicas: the disk tier, mirrored to a store.

``SharedDiskTier`` is a ``DiskTier`` over a replica's local copy of the session directory
(its own cache: appends, memory-mapped reads and crash recovery stay local and fast), and
a ``SessionMirror`` (``mirror.py``) that publishes the directory to a store every replica
reaches (``file://`` on a shared mount, ``s3://``) after each checkpoint. Any replica can
then restore the session from the store and resume it.

Publishing runs in the tier's own thread, not in the checkpoint: a checkpoint runs under
the device lock, and an upload to a network store (Qwen2.5-VL-7B with the default codec
stores 2.6 MB per 720p frame at its checkpoint's pixel budget, about 0.9 MB at the
streaming default: docs/BENCHMARKS.md) must not hold every other session's answers. The
directory may change while it is read: that is safe because segments only grow (a part
read mid-append is a torn tail that reopening truncates, and the next publish sends the
rest), every other file is replaced atomically, and resuming reconciles a block table,
index or record older or newer than the segments, as after a crash. Checkpoints asked
for while a publish runs are folded into the next one.

Publishing carries the writer's fencing token: once another replica has taken the
session over (a newer token), the store refuses this one's manifests. The tier then stops
publishing and tells its owner through ``on_fenced``, once; its local copy goes on
working, so the session that was running is not broken mid-question, but nothing it does
reaches the store again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import StreamVLMError
from .codec import BlockCodec
from .disk import DiskLog
from .disk_tier import DiskTier

log = logging.getLogger(__name__)


class SharedDiskTier(DiskTier):
    """``DiskTier`` whose session directory is published through ``mirror`` after every checkpoint.

    ``mirror`` is a ``mirror.SessionMirror`` (anything with ``publish(directory) -> version``
    that raises ``mirror.FencedError`` once another writer took over). ``on_fenced(error)``
    is called once, from the publishing thread, when that happens. ``close`` waits for the
    last checkpoint's publish.
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
        self.published_through = -1  # the newest block id the store holds from this tier
        self.publish_s = 0.0  # seconds spent publishing, over the tier's life
        self.publish_failures = 0  # publishes the store did not take (retried at the next checkpoint)
        self._newest = -1  # the newest block id written here
        self._cond = threading.Condition()
        self._asked = 0  # checkpoints asked to be published
        self._newest_asked = -1  # the newest block id at the last of them
        self._settled = 0  # checkpoints whose publish has ended (done, failed or refused)
        self._closing = False
        self._thread: threading.Thread | None = None

    def _write(self, stored, record) -> None:
        super()._write(stored, record)
        self._newest = max(self._newest, stored.id)

    # ----- publishing -------------------------------------------------------------

    def checkpointed(self) -> None:
        """Ask the publishing thread to publish the directory as it is now (returns at once)."""
        with self._cond:
            if self.fenced is not None or self._closing:
                return
            self._asked += 1
            self._newest_asked = self._newest
            if self._thread is None:
                name = f"streamvlm-publish-{self.log.directory.name}"
                self._thread = threading.Thread(target=self._publish_forever, name=name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_published(self, timeout: float | None = None) -> bool:
        """Wait until every checkpoint asked so far is published (or failed, or refused);
        False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._settled >= self._asked, timeout)

    def stop_publishing(self, why: str) -> None:
        """Publish nothing more (the session is being deleted, reset or was taken over);
        waits for a publish under way, so nothing reaches the store after this returns."""
        with self._cond:
            if self.fenced is None:
                self.fenced = RuntimeError(why)
        self.wait_published()

    def _publish_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked > self._settled or self._closing)
                if self._asked == self._settled:  # closing, and nothing left to publish
                    return
                asked, newest = self._asked, self._newest_asked
            self._publish(newest)
            with self._cond:
                self._settled = asked
                self._cond.notify_all()

    def _publish(self, newest: int) -> None:
        from .mirror import FencedError  # the mirror's module brings the store clients

        if self.fenced is not None:
            return
        start = time.perf_counter()
        try:
            self.published_version = self.mirror.publish(self.log.directory)
            self.published_through = max(self.published_through, newest)
        except FencedError as e:
            self.fenced = e
            log.warning("session %s: %s; this replica no longer writes it", self.log.directory.name, e)
            if self.on_fenced is not None:
                self.on_fenced(e)
        except (StreamVLMError, OSError) as e:
            # The store is unreachable or refused the upload (or a file went away while
            # it was read): the blocks stay safe in the local copy and the next checkpoint
            # publishes them (a crash before then loses them from the cluster's view).
            self.publish_failures += 1
            log.warning("session %s: publishing to the shared store failed: %s", self.log.directory.name, e)
        except Exception:  # a bug must not kill the thread: the session would stop publishing unseen
            self.publish_failures += 1
            log.exception("session %s: publishing to the shared store failed", self.log.directory.name)
        finally:
            self.publish_s += time.perf_counter() - start

    def close(self) -> None:
        """Publish what the last checkpoint asked for, stop the thread, close the log."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        super().close()
