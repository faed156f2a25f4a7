"""Helper of tests/test_disk_tier.py: writers of a DiskLog that the test kills with SIGKILL.

Run as a script it is a small fork server: it imports torch and streamvlm once (seconds on
a small machine), prints ``ready``, then for each ``run DIR BIG_BYTES SEGMENT_BYTES
FLUSH_EVERY`` line on stdin forks a writer, prints ``worker PID`` and, when the writer has
ended, ``exit PID STATUS``. A writer is a real process appending to a real segment file,
so killing it lands wherever the kernel stops it, mid-record included.

A writer reopens DIR (recovering whatever an earlier kill left), then puts blocks with
consecutive ids from the next free one, printing ``put ID`` after each ``put`` returned
and ``flushed ID`` after each ``flush`` returned, until it is killed (or has put
``MAX_PUTS`` blocks). Every block is ``make_block(id, BIG_BYTES)``, so the test can rebuild
exactly what was written.
"""

from __future__ import annotations

import os
import sys
import traceback

import torch

MAX_PUTS = 64


def make_block(block_id: int, big_bytes: int = 0):
    """A deterministic block for an id: small tensors of many dtypes plus ``big_bytes`` of uint8."""
    from streamvlm.memory.block import StoredBlock

    g = torch.Generator().manual_seed(block_id)
    tensors = {
        "positions": torch.randint(0, 1 << 40, (3, 17), generator=g),
        "kept": torch.rand(23, generator=g) < 0.7,
        "k.0": torch.randn(2, 17, 8, generator=g).to(torch.bfloat16),
        "v.0": torch.randn(2, 17, 8, generator=g).to(torch.float16),
        "scale": torch.randn(5, generator=g),
        "codes": torch.randint(0, 256, (3, 7), generator=g, dtype=torch.uint8),
    }
    if big_bytes:
        # A cheap pattern that differs per id, so a big block costs little to make and check.
        words = torch.arange(big_bytes // 8, dtype=torch.int64) * (2 * block_id + 1) + block_id
        tensors["big"] = words.view(torch.uint8)
    meta = {"id": block_id, "t_start": block_id * 0.5, "t_end": block_id * 0.5 + 0.25, "frames": 2}
    return StoredBlock(meta=meta, tensors=tensors)


def _say(line: str) -> None:
    # os.write, not print: no Python buffer is duplicated by fork or lost by SIGKILL.
    os.write(1, (line + "\n").encode())


def _writer(directory: str, big_bytes: int, segment_bytes: int, flush_every: int) -> None:
    from streamvlm.memory.disk import DiskLog

    tier = DiskLog(directory, segment_bytes=segment_bytes, flush_every=None, flush_seconds=None)
    start = max(tier.ids(), default=-1) + 1
    for block_id in range(start, start + MAX_PUTS):
        tier.put(make_block(block_id, big_bytes))
        _say(f"put {block_id}")
        if (block_id + 1) % flush_every == 0:
            tier.flush()
            _say(f"flushed {block_id}")
    tier.close()


def _serve() -> None:
    import streamvlm.memory.disk  # noqa: F401  (pay for the imports once, before forking)

    _say("ready")
    for line in sys.stdin:
        command, *args = line.split()
        if command != "run":
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _writer(args[0], *map(int, args[1:]))
            except BaseException:
                _say("error " + traceback.format_exc().replace("\n", " | "))
                code = 1
            os._exit(code)
        _say(f"worker {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"exit {pid} {status}")


if __name__ == "__main__":
    _serve()
