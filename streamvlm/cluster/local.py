"""A cluster on one machine: a real ``redis-server`` and a multi-node Ray cluster.

For the cluster's tests and ``streamvlm bench serve --ray``: ``RedisServer`` runs Debian's
``redis-server`` on a free loopback port (no persistence); ``LocalRayCluster`` starts real
Ray nodes as processes of this machine with ``ray.cluster_utils.Cluster``: a head node
that hosts Serve's controller and proxy but no replica, and worker nodes that each offer
one ``streamvlm_replica`` resource, so each hosts exactly one replica pinned there by
``REPLICA_PIN``. Removing a worker node kills its processes, as a machine dying would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..errors import StreamVLMError

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


def start_redis(workdir: Path, attempts: int = 3) -> RedisServer:
    """A fresh ``redis-server`` (``StreamVLMError`` naming the fix when none is installed);
    retried when another process takes the probed port first."""
    executable = redis_executable()
    if executable is None:
        raise StreamVLMError("redis-server is not installed: apt-get install redis-server (Debian)")
    for attempt in range(attempts):
        try:
            return RedisServer(executable, workdir)
        except RuntimeError:
            if attempt == attempts - 1:
                raise


REPLICA_RESOURCE = "streamvlm_replica"
# ray_actor_options that place one replica on each worker node and none on the head
REPLICA_PIN = {"num_cpus": 0, "resources": {REPLICA_RESOURCE: 1}}


class LocalRayCluster:
    """A head node and ``workers`` worker nodes of one CPU and one replica slot each, with
    this process connected as the driver. ``close()`` stops Serve, Ray and every node."""

    def __init__(self, workers: int = 2):
        import ray
        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # the head: Serve's controller and proxy need no CPU; one for anything else
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False},
        )
        self.workers = []
        self.add_workers(workers)
        ray.init(address=self.cluster.address, log_to_driver=False, logging_level="warning")

    def add_workers(self, count: int) -> None:
        """Start ``count`` more worker nodes of one CPU and one replica slot each."""
        for _ in range(count):
            self.workers.append(self.cluster.add_node(num_cpus=1, resources={REPLICA_RESOURCE: 1}))
        self.cluster.wait_for_nodes()

    def replica_nodes(self, app_name: str) -> dict[str, str]:
        """``{replica id: node id}`` of the running replicas of ``app_name``, as Serve's
        controller knows them (the ids are those of ``x-streamvlm-replica``)."""
        import ray
        from ray import serve

        controller = serve.context._get_global_client()._controller
        details = ray.get(controller.get_serve_instance_details.remote())
        nodes = {}
        for deployment in details["applications"][app_name]["deployments"].values():
            for replica in deployment["replicas"]:
                if replica["state"] == "RUNNING":
                    nodes[replica["replica_id"]] = replica["node_id"]
        return nodes

    def remove_node_of(self, app_name: str, replica_id: str) -> str:
        """Kill the worker node hosting replica ``replica_id``; returns its node id."""
        node_id = self.replica_nodes(app_name)[replica_id]
        (node,) = [w for w in self.workers if w.node_id == node_id]
        self.cluster.remove_node(node)
        self.workers.remove(node)
        return node_id

    def wait_for_replicas(self, app_name: str, count: int, timeout_s: float = 60.0) -> dict[str, str]:
        """``replica_nodes`` once exactly ``count`` replicas run (after a node is removed,
        Serve notices the dead replica and cannot place a new one: no free slot)."""
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.replica_nodes(app_name)
            if len(nodes) == count:
                return nodes
            assert time.monotonic() < deadline, f"{len(nodes)} replicas running, waited for {count}"
            time.sleep(0.25)

    def close(self) -> None:
        """Stop Ray and every node. Serve goes with its nodes: ``serve.shutdown()`` first would
        kill its controller while a retried task of it is pending, and Ray prints that on
        the driver's stdout, into a ``--json`` report."""
        import ray

        try:
            ray.shutdown()
        finally:
            self.cluster.shutdown()
