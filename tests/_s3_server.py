"""A real S3-compatible server on loopback for tests: moto's server mode in a subprocess.

``s3_server()`` (a context manager) starts ``moto_server`` on a free 127.0.0.1 port, waits
until it answers, sets dummy AWS credentials in this process's environment, creates a
bucket and yields the store URL ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:PORT``;
it stops the server afterwards. ``new_bucket_url(url)`` makes a fresh bucket on the same
server, so tests sharing one server do not see each other's objects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_command(port: int) -> list[str]:
    """``moto_server`` beside this interpreter (the console script), else ``python -m moto.server``."""
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_up(endpoint: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {server.returncode} before answering")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S:.0f} s")


def new_bucket_url(url: str, prefix: str = "streamvlm") -> str:
    """A fresh empty bucket on the server of ``url``, as a store URL with ``prefix``."""
    import boto3

    endpoint = parse_qs(urlsplit(url).query)["endpoint_url"][0]
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}"


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Run moto's S3 server for the duration of the block; yields a store URL (see module doc)."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    try:
        _wait_until_up(endpoint, server)
        yield new_bucket_url(f"s3://x?endpoint_url={endpoint}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def s3_service() -> Iterator[str]:
    """moto's S3 server for the test module (a test module says ``pytest_plugins =
    ["_s3_server"]``); ``new_bucket_url(s3_service)`` gives each test a fresh bucket."""
    with s3_server() as url:
        yield url
