"""The cluster: ``streamvlm serve --ray``'s deployment on a real multi-node Ray cluster.

Two replicas of the real app (the bundled ``streamvlm-tiny-synth`` on the CPU, settings
without a shared store) run on two worker nodes of a local Ray cluster
(``tests/_ray_cluster.py``), behind Serve's proxy on the head node. Every response names
the replica that answered (``x-streamvlm-replica``, added by the deployment). The tests
show: both replicas answer ``/health`` through the proxy; one ``x-session-id`` always
reaches one replica; a websocket through the proxy streams frames and answers; when the
node of a session's replica dies, its requests reach the survivor. The last test removes
a node, so it runs last. The command line's checks of the cluster options come first:
they need no cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.error
import urllib.request

import pytest
from _cli import assert_one_error_line, run_cli
from _ray_cluster import REPLICA_PIN, ray_cluster  # noqa: F401  (a fixture)
from _server import jpeg

from streamvlm.servers import ServerSettings, bind_socket
from streamvlm.servers.protocol import pack_frame

MODEL = "streamvlm-tiny-synth"
KEYS = [f"cam{i}" for i in range(16)]


# -------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--store", "s3://bucket/prefix"], "--store needs --ray"),
        (["--registry", "redis://127.0.0.1:6379/0"], "--registry needs --ray"),
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--ray", "--store", "http://bucket", "--registry", "redis://h:1/0"], "use file:///"),
        (["--ray", "--store", "s3://bucket/p", "--registry", "http://h:1"], "use redis://host:port/db"),
        (["--ray", "--store", "s3://bucket/p"], "--store needs --registry"),
        (["--ray", "--replica-cache", "relative/dir"], "give an absolute path"),
        (["--ray", "--lease-seconds", "5"], "--lease-seconds needs --store and --registry"),
        (["--ray", "--replicas", "0"], "expected a whole number >= 1"),
    ],
)
def test_cluster_options_fail_in_one_line_before_ray_or_torch(argv, fragment, tmp_path):
    proc, imported = run_cli(["serve", *argv], tmp_path)
    assert_one_error_line(proc, fragment)
    assert imported == []


# ------------------------------------------------------------------ the deployment's parts


@pytest.fixture
def deployment():
    pytest.importorskip(
        "ray.serve", reason="the deployment needs Ray Serve: pip install 'streamvlm[cluster]'"
    )
    from streamvlm.servers import ray_serve as deployment

    return deployment


def test_a_replica_admits_its_websockets_and_more(deployment):
    """Each websocket is one ongoing request for its life: Serve's bound is above the app's
    max_sessions, so the app, not Serve's router, refuses the session too many."""
    settings = ServerSettings(max_sessions=4)
    bound = deployment.max_ongoing_requests(settings)
    assert bound == 2 * 4 + deployment.REST_HEADROOM
    application = deployment.bind_app(deployment.ReplicaSpec(MODEL, settings, device="cpu"), replicas=3)
    config = application._bound_deployment._deployment_config
    assert config.max_ongoing_requests == bound and config.num_replicas == 3
    router = config.request_router_config
    assert router.request_router_class == deployment.CONSISTENT_HASH_ROUTER
    assert router.request_router_kwargs == {"num_fallback_replicas": 0}
    options = application._bound_deployment.ray_actor_options
    assert options["num_cpus"] == 1 and "num_gpus" not in options  # CPU: no GPU asked for


def test_replica_actor_options(deployment):
    on_gpu = deployment.ReplicaSpec(MODEL, device="cuda:0")
    assert deployment.replica_actor_options(on_gpu) == {"num_cpus": 1, "num_gpus": 1}
    pinned = deployment.replica_actor_options(on_gpu, REPLICA_PIN)
    assert pinned == {"num_cpus": 0, "num_gpus": 1, "resources": {"streamvlm_replica": 1}}


def test_each_replica_has_its_own_name_and_cache(deployment, tmp_path):
    """The settings made where deploy runs name that process; each replica renames itself."""
    from streamvlm.cluster.settings import ClusterSettings

    made_here = ClusterSettings("s3://bucket/prefix", "redis://127.0.0.1:6379/0", lease_s=4.0)
    a = deployment.replica_cluster_settings(made_here, "host-a1", str(tmp_path))
    b = deployment.replica_cluster_settings(made_here, "host-b2", None)
    assert (a.replica_id, a.cache_dir) == ("host-a1", str(tmp_path / "host-a1"))
    assert b.replica_id == "host-b2" and b.cache_dir.endswith(os.path.join("streamvlm-cluster", "host-b2"))
    assert (a.store_url, a.registry_url, a.lease_s) == (made_here.store_url, made_here.registry_url, 4.0)


def test_the_config_builder_reads_its_args(deployment, monkeypatch):
    from streamvlm.errors import ConfigError

    monkeypatch.delenv("STREAMVLM_API_KEY", raising=False)
    args = {"model": MODEL, "replicas": 2, "device": "cpu", "max_sessions": 3}
    args |= {"store": "file:///mnt/shared", "registry": "redis://redis:6379/0", "lease_seconds": 6}
    application = deployment.build_app(args)
    (spec,) = application._bound_deployment.init_args
    assert spec.settings.max_sessions == 3 and spec.settings.cluster.lease_s == 6.0
    assert spec.settings.cluster.store_url == "file:///mnt/shared"
    assert application._bound_deployment._deployment_config.num_replicas == 2
    for bad, fragment in [
        ({"replicas": 2}, "need 'model'"),
        ({"model": MODEL, "store": "s3://b/p"}, "both 'store' and 'registry'"),
        ({"model": MODEL, "gpus": 1}, "unknown args ['gpus']"),
        ({"model": MODEL, "store": "ftp://x", "registry": "redis://r:1/0"}, "use file:///"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            deployment.build_app(bad)


# ------------------------------------------------------------------------- the cluster


def call(base: str, method: str, path: str, key: str | None, body=None, token: str | None = None):
    """(status, parsed JSON, replica that answered) of one request through the proxy, with
    ``x-session-id: key`` when ``key`` is given."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if key is not None:
        req.add_header("x-session-id", key)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, headers, text = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, e.headers, e.read()
    try:
        parsed = json.loads(text)
    except ValueError:  # Serve's own errors (a replica gone mid-request) are plain text
        parsed = text.decode(errors="replace")
    return status, parsed, headers.get("x-streamvlm-replica")


@pytest.fixture(scope="module")
def app(ray_cluster):  # noqa: F811
    """The base URL of two replicas deployed on the cluster, one per worker node, and
    their ids."""
    from streamvlm.servers.ray_serve import APP_NAME, ReplicaSpec, deploy

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    spec = ReplicaSpec(MODEL, ServerSettings(max_sessions=4), device="cpu", dtype="float32")
    url = deploy(spec, replicas=2, port=port, ray_actor_options=REPLICA_PIN, max_replicas_per_node=1)
    replicas = ray_cluster.wait_for_replicas(APP_NAME, 2)
    assert len(set(replicas.values())) == 2, "two replicas on one node"
    return url, set(replicas)


def test_every_replica_answers_health_through_the_proxy(app):
    url, replicas = app
    answered = {}
    for key in KEYS:
        status, body, replica = call(url, "GET", "/health", key)
        assert status == 200 and body["status"] == "ok" and body["model"] == MODEL
        answered[key] = replica
    assert set(answered.values()) == replicas  # 16 keys on a ring of two: both get some


def test_one_session_key_always_reaches_one_replica(app):
    url, replicas = app
    first = {key: call(url, "GET", "/health", key)[2] for key in KEYS}
    for _ in range(3):
        for key in KEYS:
            assert call(url, "GET", "/health", key)[2] == first[key], key


def test_websocket_through_the_proxy_streams_frames_and_answers(app):
    """A session made by REST with a key is streamed to over a websocket with the same key:
    both reach the replica that holds it; the session is unknown on the other replica."""
    from websockets.asyncio.client import connect

    url, replicas = app
    key = "cam-websocket"
    status, session, holder = call(url, "POST", "/v1/sessions", key, body={"persist": False})
    assert status == 201, session
    other_key = next(k for k in KEYS if call(url, "GET", "/health", k)[2] != holder)
    status, body, _ = call(url, "GET", f"/v1/sessions/{session['id']}", other_key, token=session["token"])
    assert status == 404, body  # the other replica does not have it: routing is what finds it

    async def stream() -> tuple[list[dict], str]:
        headers = {"x-session-id": key, "Authorization": f"Bearer {session['token']}"}
        messages: list[dict] = []
        async with connect(
            url.replace("http://", "ws://") + session["stream"], additional_headers=headers
        ) as ws:
            accepted_by = ws.response.headers.get("x-streamvlm-replica")
            for i in range(4):
                await ws.send(pack_frame(jpeg(i), t=i * 0.5))
            question = {
                "type": "question",
                "id": "q",
                "text": "What moved?",
                "options": {"max_new_tokens": 6},
            }
            await ws.send(json.dumps(question))
            while not any(m["type"] == "answer.done" for m in messages):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=60)))
            await ws.send(json.dumps({"type": "close"}))
            async for raw in ws:
                messages.append(json.loads(raw))
            assert ws.close_code == 1000
        return messages, accepted_by

    messages, accepted_by = asyncio.run(stream())
    assert accepted_by == holder
    assert not [m for m in messages if m["type"] == "error"], messages
    frame_acks = [m for m in messages if m["type"] == "ack" and m["cause"] == "frame"]
    assert len(frame_acks) == 4
    done = next(m for m in messages if m["type"] == "answer.done")
    deltas = "".join(m["text"] for m in messages if m["type"] == "answer.delta")
    assert done["id"] == "q" and done["text"] == deltas and done["text"]
    final = next(m for m in messages if m["type"] == "ack" and m["cause"] == "close")
    assert final["received"] == 4 and final["encoded"] + final["dropped"] == 4


def test_keys_of_a_dead_node_reach_the_survivor(app, ray_cluster):  # noqa: F811
    """Runs last: it removes a worker node. Every key, those of the dead replica too,
    then reaches the surviving one."""
    from streamvlm.servers.ray_serve import APP_NAME

    url, replicas = app
    owners = {key: call(url, "GET", "/health", key)[2] for key in KEYS}
    victim = owners[KEYS[0]]
    (survivor,) = replicas - {victim}
    ray_cluster.remove_node_of(APP_NAME, victim)
    assert set(ray_cluster.wait_for_replicas(APP_NAME, 1)) == {survivor}

    deadline = time.monotonic() + 60
    while True:  # the proxy's router learns of the dead replica from Serve's controller
        try:
            status, body, replica = call(url, "GET", "/health", KEYS[0])
            if status == 200 and replica == survivor:
                break
        except (urllib.error.URLError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "the dead replica's key never reached the survivor"
        time.sleep(0.5)
    for key in KEYS:
        status, body, replica = call(url, "GET", "/health", key)
        assert status == 200 and replica == survivor, (key, owners[key], replica)
