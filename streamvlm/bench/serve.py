"""``streamvlm bench serve``: load on a real server from N concurrent streaming clients.

A uvicorn server runs in a thread on a loopback port (the same app ``streamvlm serve``
runs). For each session count N, N ``AsyncStreamClient``s stream synthetic JPEG frames
in real time at a target fps for D seconds and each asks a question every few seconds,
one at a time. Reported per N: sustained frames/s (accepted by the server, and encoded
into memory while the clients streamed), frames dropped and rejected, answer latency
(p50/p99, question sent to ``answer.done`` received, as a client sees it) and each
session's memory per tier at the end.

The clients run on one event loop in the main thread; the server, its decoder pool and
the sessions' encoder threads are what is measured, but they share the machine with the
clients, so the figures are a floor for a server on a machine of its own.

Capacity mode (``ServeBenchConfig.for_capacity``, ``--capacity``) asks how many sessions
one replica serves: it runs the counts of ``ramp_counts`` in turn, by default at 1 fps
with the model ``streamvlm serve`` loads by default, and stops at the first count out of
the limits (``within_limits``): a frame lost, a question failed, or a p99 answer latency
over ``p99_limit_s``. Encoding that falls behind real time shows in that latency too: a
question waits until every frame sent before it is encoded. ``capacity_sessions`` is the
largest count within the limits.
"""

from __future__ import annotations

import asyncio
import io
import math
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from ..cli_options import DEFAULT_MODEL  # what ``streamvlm serve`` loads unless told

QUESTIONS = ("What moved?", "What colour is the square?", "Where is the bright square?")

HEADER = (
    f"{'sessions':>8} {'fps/sess':>8} {'sent/s':>7} {'accept/s':>8} {'encode/s':>8} {'dropped':>7} "
    f"{'rejected':>8} {'answers':>7} {'p50 s':>7} {'p99 s':>7} {'ttft50 s':>8} "
    f"{'device B':>9} {'host B':>9} {'disk B':>7}"
)


@dataclass(frozen=True)
class ServeBenchConfig:
    """What ``bench serve`` runs; every field is a command-line option."""

    model: str = "tiny-qwen2.5-vl"
    sessions: tuple[int, ...] = (1, 2, 4)
    duration_s: float = 20.0  # seconds each session count streams for
    fps: float = 8.0  # frames per second each session sends, in real time
    size: int = 112  # frame side in pixels
    question_every_s: float = 2.0  # a session asks its next question this long after the last answer
    max_new_tokens: int = 8
    window: int | None = 8  # None: what the model recommends (``StreamVLM.memory``)
    device_bytes: int = 256 << 10  # small tiers, so blocks move between tiers during the run
    host_bytes: int = 1 << 20
    device: str | None = None
    dtype: str | None = None
    lock: str = "priority"  # the engine's device lock, by ``DEVICE_LOCKS`` name ("fifo": the old one)
    capacity: bool = False  # ramp the session count (``sessions`` unused) until out of the limits
    p99_limit_s: float = 1.0  # capacity mode: the largest p99 answer latency within the limits
    max_sessions: int = 64  # capacity mode: the last count of the ramp

    @classmethod
    def for_capacity(cls, **options) -> ServeBenchConfig:
        """Capacity mode, with its defaults where ``options`` give none: 1 fps, and the model
        and window a deployment of the tiny model runs (``streamvlm serve``'s default model,
        the bundled ``streamvlm-tiny-synth``, at the window its checkpoint recommends; the
        plain mode's ``tiny-qwen2.5-vl`` has random weights, no deployment serves it)."""
        return replace(cls(**{"model": DEFAULT_MODEL, "fps": 1.0, "window": None, **options}), capacity=True)

    @property
    def counts(self) -> tuple[int, ...]:
        """The session counts to run, in order (capacity mode stops early)."""
        return ramp_counts(self.max_sessions) if self.capacity else self.sessions


@dataclass
class ServeBenchRow:
    """One session count's figures (rates are per second of the streaming window)."""

    sessions: int
    fps_target: float
    duration_s: float
    frames_sent: int
    frames_accepted: int
    frames_encoded_in_window: int  # encoded while the clients streamed
    frames_encoded: int  # after the close handshake: every accepted frame not dropped
    frames_dropped: int
    frames_dropped_rate: int
    frames_dropped_queue: int
    frames_rejected: int
    drain_s: float  # how long closing took: encoding the frames still queued
    answers: int
    answer_errors: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    server_latency_p50_s: float | None
    # the server's latency in two parts: waiting for the frames sent before the question to
    # be encoded, then the answer itself (prefill and tokens, device waits included)
    frames_wait_p50_s: float | None
    frames_wait_p99_s: float | None
    answer_p50_s: float | None
    answer_p99_s: float | None
    memory_bytes_per_session: dict[str, float]  # mean over sessions, per tier
    memory_bytes_max: dict[str, int]  # the largest session, per tier

    @property
    def sent_per_s(self) -> float:
        return self.frames_sent / self.duration_s

    @property
    def accepted_per_s(self) -> float:
        return self.frames_accepted / self.duration_s

    @property
    def encoded_per_s(self) -> float:
        return self.frames_encoded_in_window / self.duration_s

    def line(self) -> str:
        mem = self.memory_bytes_per_session
        return (
            f"{self.sessions:>8} {self.fps_target:>8.1f} {self.sent_per_s:>7.1f} {self.accepted_per_s:>8.1f} "
            f"{self.encoded_per_s:>8.1f} {self.frames_dropped:>7} {self.frames_rejected:>8} {self.answers:>7} "
            f"{_fmt(self.latency_p50_s):>7} {_fmt(self.latency_p99_s):>7} {_fmt(self.ttft_p50_s):>8} "
            f"{mem.get('device', 0):>9.0f} {mem.get('host', 0):>9.0f} {mem.get('disk', 0):>7.0f}"
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "sent_per_s": self.sent_per_s,
            "accepted_per_s": self.accepted_per_s,
            "encoded_per_s": self.encoded_per_s,
        }


@dataclass
class ServeBenchResult:
    config: ServeBenchConfig
    rows: list[ServeBenchRow] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    @property
    def capacity_sessions(self) -> int:
        """The largest session count within the capacity limits (``capacity_sessions``)."""
        return capacity_sessions(self.rows, self.config.p99_limit_s)

    def to_dict(self) -> dict:
        capacity = {"capacity_sessions": self.capacity_sessions} if self.config.capacity else {}
        return {
            "config": asdict(self.config),
            "machine": self.machine,
            "rows": [r.to_dict() for r in self.rows],
            **capacity,
        }


def ramp_counts(max_sessions: int) -> tuple[int, ...]:
    """Capacity mode's session counts up to ``max_sessions``: 1, 2, 4, 6, 8, then steps of the
    largest power of two within a quarter of the count (10, ..., 16, 20, ..., 32, 40, ...),
    so a capacity is found to within 25% in a number of runs that grows as its logarithm."""
    counts, n = [], 1
    while n <= max_sessions:
        counts.append(n)
        n = 2 if n == 1 else n + max(2, 1 << max(0, (n // 4).bit_length() - 1))
    return tuple(counts)


def within_limits(row: ServeBenchRow, p99_limit_s: float) -> bool:
    """Whether one session count was served within the capacity limits: every frame sent
    encoded (none dropped or rejected), every question answered, at a p99 latency of at
    most ``p99_limit_s`` seconds."""
    lost = row.frames_dropped + row.frames_rejected
    answered = row.answers > 0 and row.answer_errors == 0
    return lost == 0 and answered and row.latency_p99_s is not None and row.latency_p99_s <= p99_limit_s


def capacity_sessions(rows: list[ServeBenchRow], p99_limit_s: float) -> int:
    """The largest session count within the limits, counting up until the first count out
    of them (0 when the first is): a count past a failing one does not count."""
    best = 0
    for row in sorted(rows, key=lambda r: r.sessions):
        if not within_limits(row, p99_limit_s):
            break
        best = row.sessions
    return best


def run_serve_bench(config: ServeBenchConfig, log: Callable[[str], None] = print) -> ServeBenchResult:
    """Load the model once, then for each session count serve it and stream to it; in
    capacity mode, stop after the first count out of the limits."""
    import torch

    from ..runtime.engine import StreamVLM
    from ..runtime.scheduling import DEVICE_LOCKS
    from ..servers import ServerSettings, create_app

    kwargs = {k: v for k, v in (("device", config.device), ("dtype", config.dtype)) if v is not None}
    engine = StreamVLM.from_pretrained(config.model, **kwargs)
    engine.device_lock = DEVICE_LOCKS[config.lock]()  # before any session: they all share it
    settings = ServerSettings(
        api_key=None,
        max_sessions=max(config.counts),
        idle_timeout_s=None,
        max_fps=max(30.0, 2 * config.fps),  # the bench measures the server, not its rate limit
        max_new_tokens=max(config.max_new_tokens, 8),
    )
    result = ServeBenchResult(
        config,
        machine={
            "model": engine.model_name,
            "device": str(getattr(engine.backend, "device", config.device)),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "lock": type(engine.device_lock).__name__,
        },
    )
    frames = _synthetic_frames(config.size)
    # one session opened and closed first: what a process does once (lazy imports, registries
    # loading their members; the first lookups are not thread-safe when N sessions open at
    # once, registry.py) is neither measured nor raced
    engine.new_session(engine.memory(**_memory_options(config))).close()
    for n in config.counts:
        server = _LoopbackServer(create_app(engine, settings), settings)
        try:
            row = asyncio.run(_bench_sessions(server.url, n, config, frames))
        finally:
            server.stop()
        result.rows.append(row)
        log(row.line())
        if config.capacity and not within_limits(row, config.p99_limit_s):
            break
    return result


# --------------------------------------------------------------------------- clients


async def _bench_sessions(url: str, n: int, config: ServeBenchConfig, frames: list[bytes]) -> ServeBenchRow:
    runs = await asyncio.gather(*(_one_session(url, config, frames, i, n) for i in range(n)))
    latencies = [x for r in runs for x in r["latencies"]]
    ttfts = [x for r in runs for x in r["ttfts"]]
    server_latencies = [x for r in runs for x in r["server_latencies"]]
    waits = [x for r in runs for x in r["waits"]]
    answering = [x for r in runs for x in r["answering"]]
    tiers = sorted({tier for r in runs for tier in r["bytes_per_tier"]})
    final = [r["final"] for r in runs]
    return ServeBenchRow(
        sessions=n,
        fps_target=config.fps,
        duration_s=config.duration_s,
        frames_sent=sum(r["sent"] for r in runs),
        frames_accepted=sum(f["accepted"] for f in final),
        frames_encoded_in_window=sum(r["encoded_in_window"] for r in runs),
        frames_encoded=sum(f["encoded"] for f in final),
        frames_dropped=sum(f["dropped"] for f in final),
        frames_dropped_rate=sum(f["dropped_rate"] for f in final),
        frames_dropped_queue=sum(f["dropped_queue"] for f in final),
        frames_rejected=sum(f["rejected"] for f in final),
        drain_s=max(r["drain_s"] for r in runs),
        answers=len(latencies),
        answer_errors=sum(r["answer_errors"] for r in runs),
        latency_p50_s=_percentile(latencies, 50),
        latency_p99_s=_percentile(latencies, 99),
        ttft_p50_s=_percentile(ttfts, 50),
        server_latency_p50_s=_percentile(server_latencies, 50),
        frames_wait_p50_s=_percentile(waits, 50),
        frames_wait_p99_s=_percentile(waits, 99),
        answer_p50_s=_percentile(answering, 50),
        answer_p99_s=_percentile(answering, 99),
        memory_bytes_per_session={
            t: statistics.fmean(r["bytes_per_tier"].get(t, 0) for r in runs) for t in tiers
        },
        memory_bytes_max={t: max(r["bytes_per_tier"].get(t, 0) for r in runs) for t in tiers},
    )


async def _one_session(url: str, config: ServeBenchConfig, frames: list[bytes], index: int, n: int) -> dict:
    from ..client.async_client import AsyncStreamClient

    memory = _memory_options(config)
    # a wide window: frames are sent on the clock, and acks never hold the sender back
    client = AsyncStreamClient(url, memory=memory, max_in_flight=256, delete_on_exit=False)
    await client.connect()
    loop = asyncio.get_running_loop()
    stats = {"latencies": [], "ttfts": [], "server_latencies": [], "waits": [], "answering": []}
    stats["answer_errors"] = 0
    stop = asyncio.Event()
    asking = asyncio.create_task(_ask_repeatedly(client, config, stop, stats, index))
    start, k = loop.time(), 0
    # stagger sessions over one frame interval so that N clients do not send in lockstep
    offset = index / (config.fps * n)
    while (t := k / config.fps) < config.duration_s:
        await asyncio.sleep(max(0.0, start + offset + t - loop.time()))
        await client.send_frame(frames[k % len(frames)], t)
        k += 1
    await client.wait_in_flight(0)
    encoded_in_window = client.last_ack["encoded"]
    stop.set()
    await asking
    drain_start = loop.time()
    final = await client.close()
    drain_s = loop.time() - drain_start
    info = await client.stats()
    await client.delete_session()
    return {
        **stats,
        "sent": client.frames_sent,
        "encoded_in_window": encoded_in_window,
        "final": final,
        "drain_s": drain_s,
        "bytes_per_tier": info["stats"]["bytes_per_tier"],
    }


async def _ask_repeatedly(
    client, config: ServeBenchConfig, stop: asyncio.Event, stats: dict, index: int
) -> None:
    """Ask a question every ``question_every_s`` (after the previous answer) until ``stop``."""
    from ..client.rest import ClientError

    asked = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), config.question_every_s)
            return
        except TimeoutError:
            pass
        text = QUESTIONS[(index + asked) % len(QUESTIONS)]
        asked += 1
        sent = time.perf_counter()
        try:
            stream = await client.ask(text, max_new_tokens=config.max_new_tokens)
            first = None
            async for _ in stream:
                first = first or time.perf_counter()
            done = stream.done
        except ClientError:
            stats["answer_errors"] += 1
            continue
        end = time.perf_counter()
        stats["latencies"].append(end - sent)
        stats["ttfts"].append((first or end) - sent)
        stats["server_latencies"].append(done["timings"]["latency_s"])
        stats["waits"].append(done["timings"]["wait_s"])
        stats["answering"].append(done["timings"]["total_s"])


# ---------------------------------------------------------------------------- server


class _LoopbackServer:
    """The app under uvicorn in a daemon thread, on a free 127.0.0.1 port."""

    def __init__(self, app, settings):
        from ..servers import bind_socket, build_server

        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = build_server(app, settings, "127.0.0.1", sock.getsockname()[1], log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


# --------------------------------------------------------------------------- helpers


def _memory_options(config: ServeBenchConfig) -> dict:
    """The ``MemoryConfig`` fields each session asks for; one not given (``None``) is the model's."""
    memory = {"window": config.window, "device_bytes": config.device_bytes, "host_bytes": config.host_bytes}
    return {k: v for k, v in memory.items() if v is not None}


def _synthetic_frames(size: int, count: int = 32) -> list[bytes]:
    """JPEGs of a bright square moving over a slowly changing background, encoded once
    up front so the clients spend no time encoding while they stream."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(count):
        rgb = np.full((size, size, 3), (i * 8 % 256, 90, 170), dtype=np.uint8)
        side = max(4, size // 5)
        x = i * (size - side) // count
        rgb[size // 3 : size // 3 + side, x : x + side] = 255
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile, nearest rank (with few answers p99 is the slowest one)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
