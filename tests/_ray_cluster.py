"""A local multi-node Ray cluster for the cluster tests (not a test module: imported by them).

``ray.cluster_utils.Cluster`` starts real Ray nodes as processes on this machine: a head
node that hosts Serve's controller and proxy but no replica, and worker nodes that each
offer one ``streamvlm_replica`` resource, so each hosts exactly one replica pinned there
by ``REPLICA_PIN``. Removing a worker node kills its processes, as a machine dying would.
"""

from __future__ import annotations

import os
import time

import pytest

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
        self.workers = [
            self.cluster.add_node(num_cpus=1, resources={REPLICA_RESOURCE: 1}) for _ in range(workers)
        ]
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False, logging_level="warning")

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
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A ``LocalRayCluster`` with two worker nodes for the module's tests; skips them
    where Ray Serve is not installed."""
    pytest.importorskip(
        "ray.serve", reason="the cluster tests need Ray Serve: pip install 'streamvlm[cluster]'"
    )
    cluster = LocalRayCluster(workers=2)
    try:
        yield cluster
    finally:
        cluster.close()
