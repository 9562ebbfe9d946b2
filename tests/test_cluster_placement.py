"""Placement on a real two-node Ray cluster (ray.cluster_utils.Cluster): rollout and
learner workers land on the nodes that carry their custom resources.

The scenario runs in a subprocess (this file run as a script) so that its
``ray.init`` cannot collide with a Ray session another test in this pytest
process holds, and so its temp dir and address file stay private.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.ray_utils import free_port

REPO = Path(__file__).resolve().parents[1]



class _Where:
    """A trivial actor that says which node it runs on."""

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def scenario() -> dict:
    """Two nodes (rollout_node / learner_node), placement groups from a plan, trivial actors in them."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cluster.connect import connect
    from cluster.resources import (
        InsufficientResources,
        ResourcePlan,
        RoleSpec,
        check_plan,
        create_placement_groups,
        node_resources,
    )

    temp_dir = os.path.join(os.environ["RAY_TMPDIR"], "ray")
    os.makedirs(temp_dir, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, resources={"rollout_node": 1}, include_dashboard=False, gcs_server_port=free_port(),
        temp_dir=temp_dir))
    cluster.add_node(num_cpus=2, resources={"learner_node": 1})
    cluster.wait_for_nodes()
    out: dict = {}
    try:
        info = connect(cluster.address)
        out["resources"] = info["resources"]

        Where = ray.remote(num_cpus=0.5)(_Where)
        keep = []  # the actor handles must outlive the calls

        plan = ResourcePlan([RoleSpec("rollout", 2, 0.5, custom={"rollout_node": 0.1}),
                             RoleSpec("learner", 1, 0.5, custom={"learner_node": 0.1}),
                             RoleSpec("reward", 1, 0.5)])
        check_plan(plan, info["resources"], nodes=node_resources())
        pgs = create_placement_groups(plan, timeout_s=60)

        def start(role: str, n: int) -> list[str]:
            # The same scheduling the pipeline uses (actors/rollout_group.py, actors/learner_worker.py).
            actors = [Where.options(name=f"{role}-{i}", scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pgs[role], placement_group_bundle_index=i)).remote() for i in range(n)]
            keep.extend(actors)
            return ray.get([a.node.remote() for a in actors], timeout=120)

        out["rollout_nodes"] = start("rollout", 2)
        out["learner_nodes"] = start("learner", 1)
        out["node_of"] = {r: [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(r)]
                          for r in ("rollout_node", "learner_node")}

        too_big = ResourcePlan([RoleSpec("rollout", 4, 1, 1), RoleSpec("learner", 1, 1, custom={"learner_node": 2})])
        try:
            check_plan(too_big, ray.cluster_resources(), nodes=node_resources())
            out["refused"] = None
        except InsufficientResources as e:
            out["refused"] = str(e)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


@pytest.mark.slow
@pytest.mark.timeout(950)
def test_rollout_and_learner_land_on_their_nodes():
    for attempt in range(3):
        with tempfile.TemporaryDirectory(prefix="rp", dir="/tmp") as tmp:
            # ray.cluster_utils.Cluster starts its nodes without token auth; a token left in
            # ~/.ray by an earlier `ray start --head` must not switch this driver to token mode.
            env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
            env.pop("RAY_ADDRESS", None)
            proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=300)
        # Ray gives a raylet a fixed 30 s to register; on a saturated 2-core machine that can run out.
        if proc.returncode == 0 or "timed out during startup" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    [rollout_node] = out["node_of"]["rollout_node"]
    [learner_node] = out["node_of"]["learner_node"]
    assert rollout_node != learner_node
    assert set(out["rollout_nodes"]) == {rollout_node}
    assert out["learner_nodes"] == [learner_node]
    # A plan the cluster cannot hold is refused, naming what is missing.
    refused = out["refused"]
    assert refused is not None
    assert "GPU: the plan needs 4 (rollout 4 x 1) but the cluster has 0" in refused
    assert "learner_node: the plan needs 2" in refused


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = scenario()
    print(json.dumps(result))
