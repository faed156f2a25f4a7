"""``streamvlm bench serve --ray``: a cluster on this machine, scaled and then broken.

Everything is real: a multi-node Ray cluster (``cluster.local.LocalRayCluster``: a head
node with Serve's proxy, one worker node per replica), a ``redis-server`` holding the
session directory (unless ``--registry``), a shared store (a directory unless
``--store``), the bundled model on every replica, and clients of the public protocol
routed by ``x-session-id``. Each client is a camera streaming the bundled model's world
in real time and asking about it (``failover.QUESTION``, answer ``7``).

1. **Scale**: one replica with N sessions, then ``replicas`` replicas with N per replica,
   in the same run: sessions served, frames/s, dropped frames, p50/p99 answer latency.
   Session ids are picked so that each replica gets N (the router hashes ids; a random
   set of ids is rarely even).
2. **Failover** (``--failover``): the sessions of the last step keep streaming; a few
   seconds in, the node of the replica holding the first session is killed. Each of its
   sessions' clients reconnects with the same id and token, the cluster routes it to a
   survivor, which resumes it from the store. Reported: ``failover_s`` (disconnect to the
   next answer), ``frames_lost`` (sent before the disconnect, not in the resumed memory),
   ``blocks_lost`` (encoded before the disconnect, not published), and
   ``answers_correct_after_failover``.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .failover import ANSWER, QUESTION, shapes_frames
from .serve import _fmt, _percentile

HEADER = (
    f"{'replicas':>8} {'sessions':>8} {'frames/s':>8} {'dropped':>7} {'answers':>7} "
    f"{'correct':>7} {'p50 s':>7} {'p99 s':>7}"
)


@dataclass(frozen=True)
class ClusterBenchConfig:
    """What ``bench serve --ray`` runs; every field is a command-line option."""

    model: str = "streamvlm-tiny-synth"
    replicas: int = 2
    sessions_per_replica: int = 2
    fps: float = 1.0
    question_every_s: float = 4.0  # after the previous answer
    failover: bool = False
    tail_s: float = 8.0  # failover: seconds streamed after the world, the kill halfway
    store: str | None = None  # default: a directory under a temporary one
    registry: str | None = None  # default: a redis-server started here
    lease_s: float = 3.0
    flush_s: float = 0.5
    device: str = "cpu"


@dataclass
class CameraLog:
    """What one client saw."""

    session_id: str
    session: dict | None = None
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (asked at, seconds)
    answers: list[str] = field(default_factory=list)
    frames_sent: int = 0
    encoded_acked: int = 0  # the server's latest count of encoded frames
    dropped: int = 0
    disconnected_at: float | None = None  # failover: when the stream broke
    frames_sent_before: int = 0
    encoded_before: int = 0
    restored_frames: int | None = None  # frames_encoded of the resumed memory
    restored_blocks: int | None = None
    failover_s: float | None = None
    answer_after: str | None = None
    not_resumed: str | None = None  # why the session could not be resumed in time


@dataclass
class ClusterBenchResult:
    """The figures of ``bench serve --ray`` (its ``--json``)."""

    config: dict
    store: str
    rows: list[dict] = field(default_factory=list)  # one per replica count, as the table prints
    failover: dict | None = None
    sessions_ratio: float | None = None  # sessions of the last step over the first's
    p99_ratio: float | None = None  # the same for the p99 answer latency

    def to_dict(self) -> dict:
        return asdict(self)


def run_cluster_bench(config: ClusterBenchConfig, log: Callable[[str], None] = print) -> ClusterBenchResult:
    """Run both steps; returns the figures (``rows``, and ``failover`` when asked)."""
    from ..cluster.local import REPLICA_PIN, LocalRayCluster, free_port, start_redis
    from ..cluster.settings import ClusterSettings
    from ..servers import ServerSettings
    from ..servers.ray_serve import APP_NAME, ReplicaSpec, deploy

    work = Path(tempfile.mkdtemp(prefix="streamvlm-bench-cluster-"))
    redis = start_redis(work) if config.registry is None else None
    store = config.store or f"file://{work / 'shared'}"
    ray_cluster = LocalRayCluster(workers=config.replicas)
    report = ClusterBenchResult(asdict(config), store)
    try:
        cluster = ClusterSettings(
            store, config.registry or redis.url, lease_s=config.lease_s, flush_s=config.flush_s
        )
        # room on every replica for all the sessions: after a kill the survivors take the
        # dead replica's (docs/deploy.md: leave that headroom when sizing a cluster)
        room = max(ServerSettings.max_sessions, config.replicas * config.sessions_per_replica)
        spec = ReplicaSpec(
            config.model,
            ServerSettings(api_key=None, idle_timeout_s=None, max_sessions=room, cluster=cluster),
            device=config.device,
            replica_cache=str(work / "cache"),
        )
        port = free_port()
        steps = sorted({1, config.replicas})
        for replicas in steps:
            started = time.monotonic()
            url = deploy(
                spec, replicas=replicas, port=port, ray_actor_options=REPLICA_PIN, max_replicas_per_node=1
            )
            log(f"deployed {replicas} replica(s) in {time.monotonic() - started:.1f} s")
            ids = balanced_ids(url, replicas, config.sessions_per_replica, prefix=f"r{replicas}-cam")
            last = replicas == steps[-1]
            cameras = asyncio.run(
                _run_cameras(
                    url, ids, config, kill=(ray_cluster, APP_NAME) if last and config.failover else None
                )
            )
            row = _row(replicas, cameras, config, tail_s=config.tail_s if last and config.failover else 0.0)
            report.rows.append(row)
            log(_line(row))
            if last and config.failover:
                report.failover = _failover(cameras, config)
        if len(report.rows) == 2:
            one, many = report.rows
            report.sessions_ratio = many["sessions"] / one["sessions"]
            report.p99_ratio = _ratio(many["p99_s"], one["p99_s"])
    finally:
        ray_cluster.close()
        if redis is not None:
            redis.stop()
    return report


def balanced_ids(url: str, replicas: int, per_replica: int, prefix: str) -> list[str]:
    """Session ids the cluster routes ``per_replica`` to each of ``replicas`` replicas."""
    picked: dict[str, list[str]] = {}
    k = 0
    while sum(len(v) for v in picked.values()) < replicas * per_replica:
        session_id = f"{prefix}{k}"
        k += 1
        holders = picked.setdefault(replica_of(url, session_id), [])
        if len(holders) < per_replica:
            holders.append(session_id)
        if k > 1000 * replicas * per_replica:
            raise RuntimeError(f"could not find {per_replica} session ids for each of {replicas} replicas")
    return [session_id for ids in picked.values() for session_id in ids]


def replica_of(url: str, session_id: str) -> str:
    """The Serve id of the replica ``session_id`` is routed to (``x-streamvlm-replica``)."""
    from ..servers.ray_serve import REPLICA_HEADER

    request = urllib.request.Request(url + "/health", headers={"x-session-id": session_id})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return response.headers[REPLICA_HEADER]


# --------------------------------------------------------------------------- cameras


async def _run_cameras(url: str, ids: list[str], config: ClusterBenchConfig, kill) -> list[CameraLog]:
    frames = shapes_frames()
    cameras = [CameraLog(session_id) for session_id in ids]
    victim = replica_of(url, ids[0]) if kill is not None else None
    killer = None
    killed: list[float] = []  # when the node was killed
    if kill is not None:
        # the kill lands halfway through the tail, after every camera has seen the world
        delay = len(frames) / config.fps + config.tail_s / 2
        killer = asyncio.create_task(_kill_after(delay, kill, victim, killed))
    tail = config.tail_s if kill is not None else 0.0
    await asyncio.gather(*(_camera(url, c, frames, config, i, len(ids), tail) for i, c in enumerate(cameras)))
    if killer is not None:
        await killer
    await asyncio.gather(*(_delete(url, c) for c in cameras))
    if killed:  # the step's figures are those of the cluster whole: answers asked before the kill
        for camera in cameras:
            camera.latencies = [(at, s) for at, s in camera.latencies if at < killed[0]]
    return cameras


async def _kill_after(delay: float, kill, replica: str, killed: list[float]) -> None:
    ray_cluster, app_name = kill
    await asyncio.sleep(delay)
    killed.append(time.monotonic())
    await asyncio.to_thread(ray_cluster.remove_node_of, app_name, replica)


async def _camera(
    url: str, camera: CameraLog, frames, config: ClusterBenchConfig, index: int, n: int, tail_s: float
) -> None:
    """Stream the world (then ``tail_s`` more seconds of it, replayed) in real time, asking
    every ``question_every_s``; reconnect and ask again when the stream breaks."""
    from ..client import AsyncStreamClient, ClientError

    client = AsyncStreamClient(url, session_id=camera.session_id, max_in_flight=256, delete_on_exit=False)
    await client.connect()
    camera.session = dict(client.session)
    loop = asyncio.get_running_loop()
    total = round((len(frames) / config.fps + tail_s) * config.fps)
    start = loop.time() + index / (config.fps * n)  # staggered: clients do not send in lockstep
    next_question = start + config.question_every_s
    k = 0
    while k < total:
        t = k / config.fps
        await asyncio.sleep(max(0.0, start + t - loop.time()))
        try:
            await client.send_frame(frames[k % len(frames)][0], t)
            camera.frames_sent += 1
            camera.encoded_acked = (client.last_ack or {}).get("encoded", camera.encoded_acked)
            if loop.time() >= next_question and k < len(frames):
                await _ask(client, camera)
                next_question = loop.time() + config.question_every_s
        except ClientError:
            client = await _recover(url, client, camera)
            if client is None:
                return
        k += 1
    try:
        await _ask(client, camera)  # over the whole world: the diamond's digit
        camera.dropped = (client.last_ack or {}).get("dropped", 0)
    except ClientError:
        client = await _recover(url, client, camera)
    if client is not None:
        await client.disconnect()


async def _ask(client, camera: CameraLog, counted: bool = True) -> str:
    """Ask ``QUESTION``; its latency counts in the step's figures unless it is a failover's."""
    sent = time.monotonic()
    done = await (await client.ask(QUESTION, max_new_tokens=4)).result()
    if counted:
        camera.latencies.append((sent, time.monotonic() - sent))
        camera.answers.append(done["text"])
    return done["text"]


async def _recover(url: str, broken, camera: CameraLog, timeout_s: float = 60.0):
    """The stream broke (its replica died): reconnect until a replica resumes the session,
    read what the resumed memory holds, and ask. ``None`` when no replica resumed it
    within ``timeout_s`` (``camera.not_resumed`` says why)."""
    from ..client import AsyncStreamClient, ClientError

    camera.disconnected_at = time.monotonic()
    camera.frames_sent_before = camera.frames_sent
    camera.encoded_before = camera.encoded_acked
    await broken.disconnect()
    while True:
        client = AsyncStreamClient(url, session=dict(camera.session), max_in_flight=256, delete_on_exit=False)
        try:
            await client.connect()
            described = await client.stats()
            camera.restored_frames = described["stats"]["frames_encoded"]
            camera.restored_blocks = described["stats"]["blocks"]
            camera.answer_after = await _ask(client, camera, counted=False)
            camera.failover_s = time.monotonic() - camera.disconnected_at
            return client
        except (ClientError, OSError) as e:
            await client.disconnect()
            if time.monotonic() - camera.disconnected_at > timeout_s:
                camera.not_resumed = str(e)
                return None
            await asyncio.sleep(0.25)


async def _delete(url: str, camera: CameraLog) -> None:
    from ..client import AsyncStreamClient, ClientError

    client = AsyncStreamClient(url, session=dict(camera.session), delete_on_exit=False)
    try:
        await client.delete_session()
    except ClientError:
        pass


# --------------------------------------------------------------------------- figures


def _row(replicas: int, cameras: list[CameraLog], config: ClusterBenchConfig, tail_s: float) -> dict:
    latencies = [took for c in cameras for _, took in c.latencies]
    seconds = len(shapes_frames()) / config.fps + tail_s
    return {
        "replicas": replicas,
        "sessions": len(cameras),
        "frames_per_s": sum(c.frames_sent for c in cameras) / seconds,
        "dropped": sum(c.dropped for c in cameras),
        "answers": len(latencies),
        # the last answer of each session, over the whole world (after a failover too)
        "correct": sum(c.answers[-1] == ANSWER for c in cameras if c.answers),
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
    }


def _failover(cameras: list[CameraLog], config: ClusterBenchConfig) -> dict:
    broken = [c for c in cameras if c.disconnected_at is not None]
    moved = [c for c in broken if c.not_resumed is None]
    # frames per block, as the resumed memories hold them (the model's chunk, pruning aside)
    held = [(c.restored_frames, c.restored_blocks) for c in moved if c.restored_blocks]
    frames_per_block = sum(f for f, _ in held) / sum(b for _, b in held) if held else 1.0
    lost_frames = [c.frames_sent_before - (c.restored_frames or 0) for c in moved]
    lost_encoded = [max(0, c.encoded_before - (c.restored_frames or 0)) for c in moved]
    return {
        "sessions_moved": len(moved),
        "sessions_not_resumed": len(broken) - len(moved),
        "not_resumed_because": sorted({c.not_resumed for c in broken if c.not_resumed}),
        "failover_s": max((c.failover_s for c in moved if c.failover_s is not None), default=None),
        "failover_s_each": [c.failover_s for c in moved],
        "frames_lost": sum(lost_frames),
        "blocks_lost": sum(math.ceil(n / frames_per_block) for n in lost_encoded),
        "blocks_lost_max_per_session": max(
            (math.ceil(n / frames_per_block) for n in lost_encoded), default=0
        ),
        "frames_per_block": frames_per_block,
        # what one publish interval holds: flush_s of frames, in blocks
        "flush_interval_blocks": max(1, math.ceil(config.flush_s * config.fps / frames_per_block)),
        "answers_correct_after_failover": bool(broken)
        and len(moved) == len(broken)
        and all(c.answer_after == ANSWER for c in moved),
        "answers_after_failover": [c.answer_after for c in moved],
    }


def _line(row: dict) -> str:
    return (
        f"{row['replicas']:>8} {row['sessions']:>8} {row['frames_per_s']:>8.2f} {row['dropped']:>7} "
        f"{row['answers']:>7} {row['correct']:>7} {_fmt(row['p50_s']):>7} {_fmt(row['p99_s']):>7}"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b
