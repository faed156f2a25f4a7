"""The local multi-node Ray cluster fixture for the cluster tests (not a test module).

``LocalRayCluster`` (``streamvlm/cluster/local.py``, shared with ``bench serve --ray``)
starts a head node with no replica slot and worker nodes of one slot each; removing a
worker node kills its processes, as a machine dying would.
"""

from __future__ import annotations

import pytest

from streamvlm.cluster.local import REPLICA_PIN, REPLICA_RESOURCE, LocalRayCluster  # noqa: F401


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
