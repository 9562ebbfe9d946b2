"""Resource plans (no Ray needed) and the connect() defaults (Ray calls faked)."""
from __future__ import annotations

import time

import pytest

from cluster.resources import InsufficientResources, ResourcePlan, RoleSpec, check_plan


def paper_like_plan(colocate: bool = False) -> ResourcePlan:
    return ResourcePlan([RoleSpec("rollout", 4, 4, 1), RoleSpec("learner", 4, 4, 1), RoleSpec("reward", 1, 0.5)],
                        colocate=colocate)


def test_plan_totals_add_roles():
    assert paper_like_plan().totals() == {"CPU": 32.5, "GPU": 8.0}


def test_colocated_totals_share_slots():
    # 4 shared slots, each holding one rollout actor and one learner rank on half a GPU each
    half = ResourcePlan([RoleSpec("rollout", 4, 4, 0.5), RoleSpec("learner", 4, 4, 0.5), RoleSpec("reward", 1, 0.5)],
                        colocate=True)
    assert half.totals() == {"CPU": 32.5, "GPU": 4.0}
    uneven = ResourcePlan([RoleSpec("rollout", 2, 1, 0.5), RoleSpec("learner", 3, 2, 0.25)], colocate=True)
    assert uneven.totals() == {"CPU": 9.0, "GPU": 2.25}


def test_custom_resources_in_bundles_and_totals():
    plan = ResourcePlan([RoleSpec("rollout", 2, 1, custom={"rollout_node": 0.1}),
                         RoleSpec("learner", 1, 1, custom={"learner_node": 0.1})])
    assert plan.roles[0].bundle() == {"CPU": 1.0, "rollout_node": 0.1}
    assert plan.totals() == pytest.approx({"CPU": 3.0, "rollout_node": 0.2, "learner_node": 0.1})


def test_missing_names_the_resource_and_the_role():
    plan = ResourcePlan([RoleSpec("rollout", 4, 1, 1), RoleSpec("learner", 1, 1)])
    problems = plan.missing({"CPU": 16.0})
    assert len(problems) == 1
    msg = problems[0]
    assert msg.startswith("GPU") and "needs 4" in msg and "rollout 4 x 1" in msg and "has 0" in msg
    assert plan.missing({"CPU": 16.0, "GPU": 4.0}) == []
    with pytest.raises(InsufficientResources, match=r"GPU: the plan needs 4"):
        check_plan(plan, {"CPU": 16.0, "GPU": 0.0})


def test_missing_custom_resource_and_cpu_shortfall():
    plan = ResourcePlan([RoleSpec("rollout", 2, 3, custom={"rollout_node": 1}), RoleSpec("learner", 1, 2)])
    problems = plan.missing({"CPU": 4.0})
    assert any(p.startswith("CPU") and "needs 8" in p for p in problems)
    assert any(p.startswith("rollout_node") and "rollout 2 x 1" in p for p in problems)


def test_bundle_must_fit_on_one_node():
    # 2 GPUs per learner on nodes of 1 GPU each: the totals fit, no single node does.
    plan = ResourcePlan([RoleSpec("rollout", 1, 1, 1), RoleSpec("learner", 1, 1, 2)])
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    check_plan(plan, {"CPU": 24.0, "GPU": 3.0})  # totals only
    with pytest.raises(InsufficientResources, match="learner.*no single node"):
        check_plan(plan, {"CPU": 24.0, "GPU": 3.0}, nodes=nodes)


def test_table_lists_roles_and_cluster():
    t = paper_like_plan().table({"CPU": 64.0, "GPU": 8.0, "node:10.0.0.1": 1.0, "memory": 1e9})
    assert "rollout" in t and "learner" in t and "GPU=8" in t and "node:" not in t


# ---------------------------------------------------------------- connect(): security defaults

class _FakeCtx:
    gcs_address = "127.0.0.1:6379"


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    calls = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.setdefault("init", kw))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _FakeCtx())
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    return calls


def test_local_dashboard_binds_loopback_by_default(fake_ray):
    from cluster.connect import connect

    info = connect()
    kw = fake_ray["init"]
    assert kw["dashboard_host"] == "127.0.0.1"
    assert kw["include_dashboard"] is True
    assert info["resources"] == {"CPU": 2.0}


def test_config_default_dashboard_host_is_loopback():
    from pipelines.config import load_config

    for name in ("tiny_cpu.yaml", "smoke.yaml", "medr1_qwen2vl_2b.yaml"):
        assert load_config(name).cluster.dashboard_host == "127.0.0.1"


def test_inside_a_job_the_jobs_env_wins(fake_ray, monkeypatch):
    import json

    from cluster.connect import connect

    monkeypatch.setenv("RAY_ADDRESS", "auto")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"A": "job"}}}))
    connect(None, env_vars={"A": "cfg", "B": "cfg"}, working_dir_on_path="/somewhere")
    # No PYTHONPATH (the job's working dir is already on the path), no env var the job already sets.
    assert fake_ray["init"]["runtime_env"] == {"env_vars": {"B": "cfg"}}


def test_unreachable_address_fails_fast():
    import socket

    from cluster.connect import ClusterUnreachable, connect

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=f"127.0.0.1:{port}"):
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30
