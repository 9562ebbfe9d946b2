"""Core plans (cluster/cores.py), pinning and per-phase threads (actors/phase_threads.py), the driver
overhead metric and the reward actor's per-shard scoring: pure logic, no Ray."""
from __future__ import annotations

import os

import pytest

from cluster.cores import cores_text, parse_cores, plan_cores, split


def test_split_contiguous_shares_and_round_robin_when_short():
    assert split([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split([0, 1, 2, 3], 4) == [[0], [1], [2], [3]]
    assert split([4, 5], 3) == [[4], [5], [4]]  # more actors than cores: they share, each gets one
    assert split([0, 1], 0) == []


def test_sync_plan_gives_every_phase_every_core():
    p = plan_cores([0, 1, 2, 3], rollout_workers=2, learner_workers=1, overlap=False)
    assert p.rollout == [[0, 1], [2, 3]]  # the rollout phase: both actors together cover every core
    assert p.learner == [[0, 1, 2, 3]]  # the learner phase: every core, not its nominal share of 1
    assert not p.overlapped


def test_async_plan_splits_cores_disjointly():
    p = plan_cores([0, 1, 2, 3, 4, 5], rollout_workers=2, learner_workers=1, overlap=True)
    assert p.rollout == [[0, 1], [2]] and p.learner == [[3, 4, 5]] and p.overlapped
    p = plan_cores([0, 1], rollout_workers=2, learner_workers=1, overlap=True)
    assert p.rollout == [[0], [0]] and p.learner == [[1]]  # 2 cores: one each side
    p = plan_cores([0, 1, 2, 3], rollout_workers=1, learner_workers=2, overlap=True, rollout_cores=1)
    assert p.rollout == [[0]] and p.learner == [[1, 2], [3]]
    rollout = {c for cs in p.rollout for c in cs}
    assert not rollout & {c for cs in p.learner for c in cs}


def test_async_plan_on_one_core_shares_it_and_bad_splits_are_refused():
    p = plan_cores([3], rollout_workers=2, learner_workers=1, overlap=True)
    assert p.rollout == [[3], [3]] and p.learner == [[3]] and not p.overlapped
    with pytest.raises(ValueError, match="rollout_cores=4"):
        plan_cores([0, 1, 2, 3], 1, 1, overlap=True, rollout_cores=4)
    with pytest.raises(ValueError, match="no cores"):
        plan_cores([], 1, 1, overlap=False)


def test_core_lists_as_text_and_back():
    assert cores_text([5, 0, 1, 2]) == "0-2,5"
    assert cores_text([3]) == "3"
    assert parse_cores("0-2,5") == [0, 1, 2, 5]
    assert parse_cores(" 7 ") == [7]
    for bad in ("", "a", "3-1", "-2", "1-x"):
        with pytest.raises(ValueError, match="bad core list"):
            parse_cores(bad)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity calls")
def test_pin_and_phase_threads_in_this_process():
    import torch

    from actors.phase_threads import phase_threads, pin

    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        core = min(before)
        assert pin([core]) == [core]
        assert os.sched_getaffinity(0) == {core}
        assert phase_threads([core]) == 1 and torch.get_num_threads() == 1
        assert pin(None) is None  # no plan in the env: nothing changes
        assert os.sched_getaffinity(0) == {core}
        everything = sorted(before)
        assert phase_threads(everything) == len(everything)
        assert os.sched_getaffinity(0) == set(everything)
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def test_driver_overhead_is_what_no_phase_covers():
    from pipelines.training.metrics import driver_overhead

    m = driver_overhead(2.0, {"time_rollout": 0.5, "time_learner": 1.2, "time_push": 0.2}, previous_log_s=0.1)
    assert m["time_driver"] == pytest.approx(0.1)  # 2.0 - 1.9 within the step
    assert m["driver_overhead_s"] == pytest.approx(0.2)  # + the previous step's logging
    assert m["driver_overhead_share"] == pytest.approx(0.2 / 2.1)
    assert driver_overhead(0.0, {})["driver_overhead_share"] == 0.0


def test_reward_actor_scores_a_rollout_shard_per_prompt():
    from actors.reward import RewardWorker

    w = RewardWorker({"format": 1.0, "accuracy_strict": 1.0})
    good, bad = "<think>x</think> <answer>B</answer>", "no tags"
    shard = {"results": [{"error": None, "completions": [{"text": good}, {"text": bad}]},
                         {"error": "image failed", "completions": []},
                         {"error": None, "completions": [{"text": good}]}]}
    out = w.score_shard(shard, ["B", "A", "C"])
    assert [len(x) for x in out] == [2, 0, 1]
    assert out[0][0]["total"] == 2.0 and out[0][1]["total"] == 0.0  # format + correct letter; neither
    assert out[2][0]["total"] == 1.0  # format only: the answer is C
    assert out == [w.score([good, bad], ["B", "B"]), [], w.score([good], ["C"])]


def test_run_core_plan_from_the_config():
    from pipelines.config import load_config
    from pipelines.errors import ConfigError
    from pipelines.launch import core_plan

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    sync = core_plan(load_config(None, ["rollout.num_workers=1", "learner.num_workers=1"]))
    assert sync.rollout == [cores] and sync.learner == [cores]  # a local CPU run: each phase every core
    if len(cores) > 1:
        a = core_plan(load_config(None, ["rollout.num_workers=1", "rollout.async_mode=true"]))
        assert a.overlapped and a.rollout == [cores[:len(cores) // 2]] and a.learner == [cores[len(cores) // 2:]]
    assert core_plan(load_config(None, ["cluster.address=auto"])) is None  # a remote cluster's cores are its own
    assert core_plan(load_config(None, ["rollout.resources_per_worker.num_gpus=1"])) is None
    with pytest.raises(ConfigError, match="cluster.rollout_cores"):
        load_config(None, ["cluster.rollout_cores=-1"])
