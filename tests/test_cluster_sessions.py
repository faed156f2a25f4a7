"""Two replicas sharing a session directory (a real redis-server) and a long-term store (a
shared directory, and moto's S3 server: an emulator, the only S3 server installable here).

Each replica is the real app with its own engine, served by uvicorn on loopback; the
client is the project's own (``AsyncStreamClient``), which sends ``x-session-id`` as a
cluster's router needs. Here the client picks the replica itself; the Ray test
(tests/test_cluster_failover.py) lets Ray Serve route and kills a node instead.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from _s3_server import new_bucket_url
from _server import ServerThread, request

from streamvlm import StreamVLM
from streamvlm.bench.failover import ANSWER, published, reconnect_and_ask, shapes_frames, watch
from streamvlm.cluster.settings import ClusterSettings
from streamvlm.servers import ServerSettings, create_app

pytest_plugins = ["_redis_server", "_s3_server"]

FRAMES = shapes_frames()


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path):
    """A shared directory, or a fresh bucket on the module's moto server."""
    if request.param == "file":
        return f"file://{tmp_path / 'shared'}"
    return new_bucket_url(request.getfixturevalue("s3_service"))


def start_replicas(store_url: str, redis_url: str, tmp_path, api_key: str | None = None) -> dict:
    """Replicas ``a`` and ``b`` of one cluster (lease 3 s: renewed every second)."""
    running = {}
    for name in ("a", "b"):
        cluster = ClusterSettings(
            store_url, redis_url, replica_id=name, cache_dir=str(tmp_path / name), lease_s=3.0, flush_s=0.3
        )
        settings = ServerSettings(api_key=api_key, idle_timeout_s=None, cluster=cluster)
        engine = StreamVLM.from_pretrained("streamvlm-tiny-synth", device="cpu")
        running[name] = ServerThread(create_app(engine, settings), settings)
    return running


@pytest.fixture
def replicas(store_url, redis_url, tmp_path):
    running = start_replicas(store_url, redis_url, tmp_path)
    yield running
    for server in running.values():
        server.stop()


def open_sessions(server: ServerThread) -> int:
    return request(server.http, "GET", "/health")[1]["sessions"]


def test_a_session_taken_over_by_another_replica_answers_from_the_same_blocks(replicas, store_url, tmp_path):
    from streamvlm.memory.mirror import FencedError, SessionMirror, verify
    from streamvlm.memory.objectstore import open_store

    a, b = replicas["a"], replicas["b"]
    cam0 = asyncio.run(watch(a.http, "cam0", FRAMES))
    cam1 = asyncio.run(watch(b.http, "cam1", FRAMES[:10]))
    assert cam0.answer == ANSWER and cam0.blocks == 10 and cam0.frames_encoded == 20
    assert cam1.blocks == 5

    # cam0's client comes back through replica b: it takes the lease and resumes from the store
    resumed = asyncio.run(reconnect_and_ask(b.http, cam0.session))
    assert resumed.answer == ANSWER and resumed.replica == "b"
    assert resumed.blocks == cam0.blocks and resumed.frames_encoded == cam0.frames_encoded

    # replica a's lease was taken: it lets the session go (its keeper renews every second)
    deadline = time.monotonic() + 10
    while open_sessions(a) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_sessions(a) == 0 and open_sessions(b) == 2

    # a late write with a's fence (1) is refused by the store itself
    store = open_store(store_url)
    late = SessionMirror(store, "cam0", 1, "a")
    with pytest.raises(FencedError):
        late.publish(tmp_path / "b" / "cam0")  # any session directory: b's copy of cam0
    assert verify(store, "cam0") == [] and verify(store, "cam1") == []

    # cam1 kept its state on b
    again = asyncio.run(reconnect_and_ask(b.http, cam1.session))
    assert again.blocks == cam1.blocks and again.replica == "b"


def test_names_are_unique_across_the_cluster_and_delete_frees_them(replicas, store_url):
    from streamvlm.memory.mirror import latest_version
    from streamvlm.memory.objectstore import open_store

    a, b = replicas["a"], replicas["b"]
    status, created = request(a.http, "POST", "/v1/sessions", {"id": "door", "persist": True})
    assert status == 201 and created["id"] == "door"
    status, refused = request(b.http, "POST", "/v1/sessions", {"id": "door"})
    assert status == 409 and refused["error"]["code"] == "session_exists"
    status, bad = request(b.http, "POST", "/v1/sessions", {"id": "../etc"})
    assert status == 400 and bad["error"]["code"] == "bad_option"

    # any replica can reach it with its token (b resumes it), a wrong token gets nothing
    status, _ = request(b.http, "GET", "/v1/sessions/door", token="wrong")
    assert status == 403
    status, described = request(b.http, "GET", "/v1/sessions/door", token=created["token"])
    assert status == 200 and described["shared"]["replica"] == "b" and described["shared"]["fence"] == 2

    status, _ = request(b.http, "DELETE", "/v1/sessions/door", token=created["token"])
    assert status == 200
    assert latest_version(open_store(store_url), "door") is None
    status, _ = request(a.http, "GET", "/v1/sessions/door", token=created["token"])
    assert status == 404
    status, _ = request(a.http, "POST", "/v1/sessions", {"id": "door"})
    assert status == 201


def test_a_session_the_store_cannot_take_is_refused_and_its_name_stays_free(replicas, store_url, tmp_path):
    if not store_url.startswith("file://"):
        pytest.skip("the store is blocked by a file in its directory")
    blocked = tmp_path / "shared" / "sessions"
    blocked.write_text("a file where the store's sessions directory should be")
    status, refused = request(replicas["a"].http, "POST", "/v1/sessions", {"id": "cam9"})
    assert status == 503 and refused["error"]["code"] == "store_unavailable"
    assert open_sessions(replicas["a"]) == 0
    blocked.unlink()
    status, created = request(replicas["b"].http, "POST", "/v1/sessions", {"id": "cam9"})
    assert status == 201 and created["id"] == "cam9"


def test_a_reset_session_is_resumed_elsewhere_as_reset(replicas):
    """A reset starts the session's store lineage over: another replica resumes the fresh memory."""
    from streamvlm.client import AsyncStreamClient

    a, b = replicas["a"], replicas["b"]
    cam = asyncio.run(watch(a.http, "cam5", FRAMES[:6]))
    assert cam.blocks == 3

    async def reset_then_stream() -> None:
        client = AsyncStreamClient(a.http, session=dict(cam.session), delete_on_exit=False)
        await client.connect()
        await client.reset()
        for rgb, t in FRAMES[:4]:
            await client.send_frame(rgb, t)
        await client.close()

    asyncio.run(reset_then_stream())
    asyncio.run(published(a.http, cam.session, 30))
    resumed = asyncio.run(reconnect_and_ask(b.http, cam.session))
    assert resumed.replica == "b" and (resumed.blocks, resumed.frames_encoded) == (2, 4)


def test_the_operator_lists_the_clusters_sessions_and_deletes_one_held_elsewhere(redis_url, tmp_path):
    from streamvlm.memory.mirror import latest_version
    from streamvlm.memory.objectstore import open_store

    store_url = f"file://{tmp_path / 'shared'}"
    running = start_replicas(store_url, redis_url, tmp_path, api_key="op-key")
    try:
        a, b = running["a"], running["b"]
        status, created = request(
            a.http, "POST", "/v1/sessions", {"id": "gate", "persist": True}, token="op-key"
        )
        assert status == 201
        status, listed = request(b.http, "GET", "/v1/sessions", token="op-key")
        assert listed["sessions"] == []  # b holds none
        (gate,) = listed["cluster_sessions"]
        assert gate["id"] == "gate" and gate["owner"] == "a" and gate["lease_alive"] and gate["fence"] == 1

        status, deleted = request(b.http, "DELETE", "/v1/sessions/gate", token="op-key")
        assert status == 200 and deleted == {"id": "gate", "deleted": True}
        assert latest_version(open_store(store_url), "gate") is None
        deadline = time.monotonic() + 10  # a's keeper finds its lease taken and lets go
        while open_sessions(a) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_sessions(a) == 0
        status, _ = request(a.http, "GET", "/v1/sessions/gate", token=created["token"])
        assert status == 404
        status, _ = request(b.http, "DELETE", "/v1/sessions/gate", token="op-key")
        assert status == 404
    finally:
        for server in running.values():
            server.stop()


def test_a_session_no_replica_holds_is_swept_after_the_idle_timeout(redis_url, tmp_path):
    """Replica a shuts down (its sessions released for another replica to resume); nobody
    comes back for them, so replica b deletes them from the directory and the store."""
    from streamvlm.memory.mirror import latest_version
    from streamvlm.memory.objectstore import open_store

    store_url = f"file://{tmp_path / 'shared'}"
    running = {}
    for name in ("a", "b"):
        cluster = ClusterSettings(store_url, redis_url, replica_id=name, cache_dir=str(tmp_path / name))
        settings = ServerSettings(api_key=None, idle_timeout_s=1.0, cluster=cluster)
        engine = StreamVLM.from_pretrained("streamvlm-tiny-synth", device="cpu")
        running[name] = ServerThread(create_app(engine, settings), settings)
    try:
        status, _ = request(running["a"].http, "POST", "/v1/sessions", {"id": "left", "persist": True})
        assert status == 201 and latest_version(open_store(store_url), "left") is not None
        running["a"].stop()  # a clean shutdown: published, lease released, nothing deleted
        deadline = time.monotonic() + 15
        while latest_version(open_store(store_url), "left") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert latest_version(open_store(store_url), "left") is None
        status, _ = request(running["b"].http, "POST", "/v1/sessions", {"id": "left"})
        assert status == 201  # the name is free again
    finally:
        running["b"].stop()
