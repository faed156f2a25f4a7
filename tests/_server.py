"""Helpers for the server tests (not a test module: imported by them): uvicorn in a
thread on a free loopback port, one-call HTTP requests, JPEG frames, a Prometheus
text-format checker."""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from streamvlm.servers import ServerSettings, bind_socket, build_server


class ServerThread:
    """uvicorn serving an app in a thread, on a free loopback port."""

    def __init__(self, app, settings: ServerSettings):
        sock = bind_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = build_server(app, settings, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_for_health(base: str, proc, timeout_s: float = 30.0) -> tuple[int, dict]:
    """``GET /health`` on a server starting in subprocess ``proc`` until it answers:
    (status, body). Fails if ``proc`` exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return request(base, "GET", "/health")
        except urllib.error.URLError:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not come up"
            time.sleep(0.1)


def request(base: str, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON or text) of one HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, text, kind = (
                response.status,
                response.read().decode(),
                response.headers.get("content-type", ""),
            )
    except urllib.error.HTTPError as e:
        status, text, kind = e.code, e.read().decode(), e.headers.get("content-type", "")
    return status, json.loads(text) if kind.startswith("application/json") else text


def jpeg(i: int, size: int = 112) -> bytes:
    """A frame that changes with ``i``: a moving bright square on a tinted background."""
    rgb = np.full((size, size, 3), (i * 23 % 255, 80, 160), dtype=np.uint8)
    x = i * 7 % (size - 24)
    rgb[40:64, x : x + 24] = 255
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=80)
    return out.getvalue()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


METRIC_LINE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"
    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})?'
    r" ([-+]?[0-9.]+([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$"
)


def parse_metrics(text: str) -> dict[str, float]:
    """Check the Prometheus text format line by line; return ``{name{labels}: value}``."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "histogram"), line
            typed.add(name)
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            assert METRIC_LINE.match(line), f"not a Prometheus sample line: {line!r}"
            key, value = line.rsplit(" ", 1)
            base = re.sub(r"_(bucket|sum|count)$", "", key.split("{")[0])
            assert key.split("{")[0] in typed or base in typed, f"sample before its TYPE: {line}"
            samples[key] = float(value)
    return samples


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: restore the default
    disposition, which the child's Python turns into KeyboardInterrupt as at a terminal.
    A test run started in the background by a shell without job control inherits SIGINT
    ignored, and so would the child, which then never sees the Ctrl-C under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
