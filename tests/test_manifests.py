"""Cluster manifests: they parse, the RayJob runs the real CLI, and the worker groups
hold the resource plan implied by the paper config."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "cluster" / "manifests"


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def _plan(cfg):
    from pipelines.launch import resource_plan

    return resource_plan(cfg)


def _rayjob_cfg():
    from pipelines.config import load_config

    job = load("rayjob-medr1-2b.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.cli"]
    return job, argv, load_config(argv[4], argv[5:])


def test_manifests_parse():
    job = load("rayjob-medr1-2b.yaml")
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    launcher = load("ray-cluster-gpu.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert {"rollout", "learner"} <= set(launcher["available_node_types"])
    assert any("requirements/gpu.txt" in c for c in launcher["setup_commands"])


def test_rayjob_entrypoint_is_a_valid_medr1_train_command():
    from pipelines.cli.main import build_parser

    job, argv, cfg = _rayjob_cfg()
    args = build_parser().parse_args(argv[3:])
    assert args.command == "train" and args.config == "configs/medr1_qwen2vl_2b.yaml"
    assert (REPO / args.config).is_file()
    # The run must land on shared storage, not in the job's working dir.
    assert str(cfg.trainer.output_dir).startswith("/")
    assert dict(cfg.rollout.resources_per_worker.custom) == {"rollout_node": 0.1}
    assert dict(cfg.learner.resources_per_worker.custom) == {"learner_node": 0.1}


def _custom(params: dict) -> dict:
    raw = params.get("resources")
    if not raw:
        return {}
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"'):  # KubeRay passes it to `ray start --resources` quoted
        raw = json.loads(raw)
    return {k: float(v) for k, v in json.loads(raw).items()}


def _group_resources(group: dict) -> dict:
    p = group["rayStartParams"]
    per = {"CPU": float(p.get("num-cpus", 0)), "GPU": float(p.get("num-gpus", 0)), **_custom(p)}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert float(limits.get("nvidia.com/gpu", 0)) == per["GPU"], "pod GPU limit must match num-gpus"
    assert float(limits["cpu"]) >= per["CPU"]
    return {k: v * group["replicas"] for k, v in per.items()}


def test_worker_groups_cover_the_paper_plan_role_by_role():
    from cluster.resources import ResourcePlan, check_plan

    job, _, cfg = _rayjob_cfg()
    plan = _plan(cfg)
    spec = job["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"rollout", "learner"}
    head = spec["headGroupSpec"]["rayStartParams"]
    head_res = {"CPU": float(head.get("num-cpus", 0)), "GPU": float(head.get("num-gpus", 0))}

    total: dict[str, float] = dict(head_res)
    for name, g in groups.items():
        res = _group_resources(g)
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + v
        # Each role alone fits in its own group (it is pinned there by its custom marker).
        role = [r for r in plan.roles if r.role == name]
        check_plan(ResourcePlan(role), res)
    check_plan(plan, total)
    # 4 rollout GPUs + 4 learner GPUs, as the paper config says.
    assert plan.totals()["GPU"] == 8 and total["GPU"] == 8
    # The reward worker is not pinned: it fits on the head.
    check_plan(ResourcePlan([r for r in plan.roles if r.role == "reward"]), head_res)


def test_launcher_node_types_cover_the_paper_plan():
    from cluster.resources import check_plan

    _, _, cfg = _rayjob_cfg()
    launcher = load("ray-cluster-gpu.yaml")
    total: dict[str, float] = {}
    nodes = []
    for t in launcher["available_node_types"].values():
        n = max(int(t.get("min_workers", 0)), 1 if t is launcher["available_node_types"][launcher["head_node_type"]]
                else 0)
        for _ in range(n):
            nodes.append({k: float(v) for k, v in t["resources"].items()})
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0.0) + v
    check_plan(_plan(cfg), total, nodes=nodes)


def test_launcher_head_binds_the_dashboard_to_loopback():
    # Read from the command that starts the head, not from anywhere in the text (a comment would do).
    launcher = load("ray-cluster-gpu.yaml")
    start = [c for c in launcher["head_start_ray_commands"] if "ray start --head" in c]
    assert len(start) == 1
    argv = shlex.split(start[0].split(";")[-1])
    hosts = [a.split("=", 1)[1] for a in argv if a.startswith("--dashboard-host=")]
    assert hosts == ["127.0.0.1"]


def test_rayjob_head_is_reachable_only_with_the_token_and_only_inside_the_cluster():
    # KubeRay's submitter reaches the head through its Service, so the head binds the pod network
    # (SECURITY.md); what stands in front of the Jobs API there is Ray's token auth, and the Service
    # must not be published outside the cluster.
    job = load("rayjob-medr1-2b.yaml")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)  # Ray's token auth
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host") in ("0.0.0.0", "127.0.0.1")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert "headService" not in head or head["headService"].get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for c in head["template"]["spec"]["containers"]:  # nothing turns the auth back off
        assert all(e.get("name") != "RAY_AUTH_MODE" or e.get("value") == "token" for e in c.get("env", []))
    for port in head["template"]["spec"]["containers"][0]["ports"]:
        assert "hostPort" not in port  # a host port would publish the dashboard on the node's interfaces
