"""A real ``redis-server`` for the cluster tests (not a test module: imported by them).

``running_redis(workdir)`` starts one on a free loopback port, without persistence, and
stops it after; the fixtures wrap it, for a test module that says::

    pytest_plugins = ["_redis_server"]

``redis_server`` is one server per test module; ``redis_url`` hands each test its
``redis://127.0.0.1:<port>/0`` URL with the database emptied first. Both skip, saying why,
where Debian's ``redis-server`` is not installed (``.ci/run`` installs it when it may).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def redis_executable() -> str | None:
    """Path of ``redis-server``, or None if it is not installed."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A ``redis-server`` subprocess on a loopback port, answering PING once constructed."""

    def __init__(self, executable: str, workdir: Path):
        import redis

        self.port = free_port()
        self.log_path = workdir / f"redis-{self.port}.log"
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]  # no persistence: nothing to save or load
        args += ["--dir", str(workdir), "--logfile", str(self.log_path)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        log = self.log_path.read_text() if self.log_path.is_file() else ""
                        raise RuntimeError(f"redis-server on port {self.port} did not start: {log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Kill the server (no shutdown save: it has no persistence to save)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for the ``with`` block; skips the test if none is installed."""
    executable = redis_executable()
    if executable is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis")
    # another process may take the free port between our probe and the bind: try again
    for attempt in range(3):
        try:
            server = RedisServer(executable, workdir)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the test module."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """The module's server URL, its database emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
