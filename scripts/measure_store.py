"""Measure the shared store: throughput of 8 MiB objects and the cost of publishing a session.

    python scripts/measure_store.py [--objects 16] [--blocks 200]

Prints one JSON object:

* ``objects``: put and get throughput (MiB/s) of ``--objects`` 8 MiB objects on ``file://``
  (a local directory standing in for a shared mount), on ``s3://`` (moto's server on
  loopback, started here), and, for reference, the same bytes copied by ``shutil.copyfile``
  and written by a plain ``write`` + fsync;
* ``publish``: a real session of ``streamvlm-tiny-synth`` with ``--blocks`` blocks on disk:
  its size, the time of its first publish, of an incremental one after two more blocks, and
  of a restore, per store.

Not a test: timings depend on the machine (and moto is an emulator, not S3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the moto server fixture, shared with the tests

from _s3_server import new_bucket_url, s3_server  # noqa: E402

from streamvlm import StreamVLM  # noqa: E402
from streamvlm.memory.mirror import SessionMirror  # noqa: E402
from streamvlm.memory.objectstore import open_store  # noqa: E402

MIB = 1 << 20
OBJECT_BYTES = 8 * MIB


def mib_per_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / MIB / seconds, 1)


def object_throughput(url: str, count: int) -> dict:
    store = open_store(url)
    payloads = [os.urandom(OBJECT_BYTES) for _ in range(count)]
    start = time.perf_counter()
    for i, data in enumerate(payloads):
        store.put(f"bench/{i:04d}", data)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        assert len(store.get(f"bench/{i:04d}")) == OBJECT_BYTES
    get_s = time.perf_counter() - start
    store.delete(store.list("bench/"))
    total = count * OBJECT_BYTES
    return {"put_mib_s": mib_per_s(total, put_s), "get_mib_s": mib_per_s(total, get_s)}


def copy_throughput(scratch: Path, count: int) -> dict:
    """The same bytes without a store: ``shutil.copyfile`` (an in-kernel copy) and a plain
    ``write`` from memory, each followed by fsync: what a shared mount cannot beat."""
    source, target = scratch / "copy-src", scratch / "copy-dst"
    source.mkdir(), target.mkdir()
    payloads = [os.urandom(OBJECT_BYTES) for _ in range(count)]
    for i, data in enumerate(payloads):
        (source / str(i)).write_bytes(data)
    start = time.perf_counter()
    for i in range(count):
        shutil.copyfile(source / str(i), target / str(i))
        with open(target / str(i), "rb+") as f:
            os.fsync(f.fileno())
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    for i, data in enumerate(payloads):
        with open(target / f"w{i}", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_s = time.perf_counter() - start
    total = count * OBJECT_BYTES
    return {"copyfile_mib_s": mib_per_s(total, copy_s), "write_fsync_mib_s": mib_per_s(total, write_s)}


def session_directory(directory: Path, blocks: int):
    """A real session on disk with ``blocks`` blocks (two frames each), checkpointed."""
    engine = StreamVLM.from_pretrained("streamvlm-tiny-synth")
    session = engine.new_session(memory=engine.memory(disk_dir=str(directory)))
    rng = np.random.default_rng(0)
    session.add_frames(
        (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), float(t)) for t in range(2 * blocks)
    )
    session.checkpoint()
    return session


def publish_cost(url: str, directory: Path, session, scratch: Path) -> dict:
    store = open_store(url)
    mirror = SessionMirror(store, "bench", fence=1, owner="measure")
    start = time.perf_counter()
    mirror.publish(directory)
    first_s = time.perf_counter() - start
    first_bytes = mirror.stats()["bytes_uploaded"]
    rng = np.random.default_rng(1)
    t0 = session.stream_time + 1
    session.add_frames((rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), t0 + t) for t in range(4))
    session.checkpoint()
    start = time.perf_counter()
    mirror.publish(directory)
    incremental_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = SessionMirror.restore(store, "bench", scratch / f"restored-{time.monotonic_ns()}", 2, "r")
    restore_s = time.perf_counter() - start
    return {
        "first_publish_s": round(first_s, 3),
        "first_publish_bytes": first_bytes,
        "incremental_publish_s": round(incremental_s, 3),
        "incremental_publish_bytes": mirror.stats()["bytes_uploaded"] - first_bytes,
        "restore_s": round(restore_s, 3),
        "restore_bytes": restored.stats()["bytes_downloaded"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=16, help="8 MiB objects per store")
    parser.add_argument("--blocks", type=int, default=200, help="blocks of the published session")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, s3_server() as s3:
        scratch = Path(tmp)
        file_url = f"file://{scratch}/store"
        result = {
            "objects": {
                "count": args.objects,
                "object_mib": OBJECT_BYTES // MIB,
                "file": object_throughput(file_url, args.objects),
                "s3_moto": object_throughput(new_bucket_url(s3), args.objects),
                "plain_copy": copy_throughput(scratch, args.objects),
            }
        }
        publish = {}
        for name, url in (("file", file_url), ("s3_moto", new_bucket_url(s3))):
            directory = scratch / f"session-{name}"
            session = session_directory(directory, args.blocks)
            on_disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name != "lock")
            publish[name] = {"blocks": session.stats().blocks, "directory_bytes": on_disk}
            publish[name].update(publish_cost(url, directory, session, scratch))
            session.close()
        result["publish"] = publish
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
