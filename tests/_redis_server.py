"""A real ``redis-server`` for the cluster tests (not a test module: imported by them).

``running_redis(workdir)`` starts one on a free loopback port, without persistence, and
stops it after; the fixtures wrap it, for a test module that says::

    pytest_plugins = ["_redis_server"]

``redis_server`` is one server per test module; ``redis_url`` hands each test its
``redis://127.0.0.1:<port>/0`` URL with the database emptied first. Both skip, saying why,
where Debian's ``redis-server`` is not installed (``.ci/run`` installs it when it may).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamvlm.cluster.local import RedisServer, free_port, redis_executable, start_redis  # noqa: F401


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for the ``with`` block; skips the test if none is installed."""
    if redis_executable() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis")
    server = start_redis(workdir)
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
