"""The failover proof: a replica's machine dies, its session resumes on another replica.

Everything is real and on this machine: a three-node Ray cluster (``ray.cluster_utils``:
a head node with Serve's proxy, two worker nodes with one replica each), a
``redis-server`` holding the session directory, and the shared long-term store, both a
directory (``file://``) and moto's S3 server (an S3 emulator on loopback, the only S3
server installable here). The client is the project's own, routed by Ray Serve through
``x-session-id``. Killing a worker node kills its replica's processes, as a machine dying
would; nothing is shut down politely.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from _ray_cluster import REPLICA_PIN, ray_cluster  # noqa: F401  (a fixture)
from _s3_server import CREDENTIALS, new_bucket_url

from streamvlm.bench.failover import ANSWER, reconnect_and_ask, shapes_frames, watch
from streamvlm.cluster.local import free_port
from streamvlm.cluster.settings import ClusterSettings
from streamvlm.servers import ServerSettings

pytest_plugins = ["_redis_server", "_s3_server"]

FRAMES = shapes_frames()


def holder(url: str, session_id: str) -> str:
    """The Serve id of the replica the cluster routes ``session_id`` to."""
    request = urllib.request.Request(url + "/health", headers={"x-session-id": session_id})
    with urllib.request.urlopen(request, timeout=30) as response:
        json.loads(response.read())
        return response.headers["x-streamvlm-replica"]


@pytest.mark.parametrize("store", ["s3", "file"])
def test_a_dead_replicas_session_resumes_on_the_other_and_answers_from_the_same_blocks(
    ray_cluster,  # noqa: F811
    store,
    redis_url,
    tmp_path,
    request,
):
    from ray import serve

    from streamvlm.memory.mirror import FencedError, SessionMirror, verify
    from streamvlm.memory.objectstore import open_store
    from streamvlm.servers.ray_serve import APP_NAME, ReplicaSpec, deploy

    ray_cluster.add_workers(2 - len(ray_cluster.workers))  # the previous case killed one
    store_url = (
        new_bucket_url(request.getfixturevalue("s3_service"))
        if store == "s3"
        else f"file://{tmp_path / 'shared'}"
    )
    cluster = ClusterSettings(store_url, redis_url, lease_s=3.0, flush_s=0.3)
    spec = ReplicaSpec(
        "streamvlm-tiny-synth",
        ServerSettings(api_key=None, idle_timeout_s=None, cluster=cluster),
        device="cpu",
        replica_cache=str(tmp_path / "cache"),
    )
    # the replicas' processes were started before the S3 server: hand them its credentials
    placement = {**REPLICA_PIN, "runtime_env": {"env_vars": dict(CREDENTIALS)}}
    url = deploy(spec, replicas=2, port=free_port(), ray_actor_options=placement, max_replicas_per_node=1)
    try:
        cam0 = asyncio.run(watch(url, "cam0", FRAMES))
        cam1 = asyncio.run(watch(url, "cam1", FRAMES[:10]))
        assert cam0.answer == ANSWER and (cam0.blocks, cam0.frames_encoded) == (10, 20)
        assert (cam1.blocks, cam1.frames_encoded) == (5, 10)
        first = holder(url, "cam0")

        ray_cluster.remove_node_of(APP_NAME, first)

        # the same id and token: routed to the survivor, which takes the lease and resumes
        resumed = asyncio.run(reconnect_and_ask(url, cam0.session))
        assert resumed.answer == ANSWER
        assert (resumed.blocks, resumed.frames_encoded) == (cam0.blocks, cam0.frames_encoded)
        assert holder(url, "cam0") != first
        # cam1 keeps its state, whether it lived on the survivor or moved there too
        again = asyncio.run(reconnect_and_ask(url, cam1.session))
        assert (again.blocks, again.frames_encoded) == (cam1.blocks, cam1.frames_encoded)

        # the dead owner's fence (1) can no longer commit, and the store is intact
        shared = open_store(store_url)
        with pytest.raises(FencedError):
            SessionMirror(shared, "cam0", 1, "the-dead-replica").publish(tmp_path / "cache")
        assert verify(shared, "cam0") == [] and verify(shared, "cam1") == []
    finally:
        serve.delete(APP_NAME)
