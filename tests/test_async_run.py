"""Async and colocated modes end to end (real Ray, vLLM, DeepSpeed).

Async: the next batch samples while the learner updates, its staleness is one
weight version, and every batch is the one the data cursor gives for that step.
The step-1 checkpoint (taken with step 2's batch in flight) is resumed in
colocated mode, where engines sleep through each update and wake for the push:
it must train on the same batches. Last, a learner that dies stops the run
naming the last good checkpoint."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def _cfg(start, out, extra=()):
    from pipelines.config import load_config

    return load_config("smoke.yaml", [
        f"trainer.output_dir={out}", *start, "logging.progress=false", "logging.tensorboard=false",
        "eval.max_samples=2", "trainer.save_every=1", "trainer.total_steps=3", "rollout.async=true", *extra])


def _batches(out):
    from pipelines.traces import read_traces

    rows = read_traces(out / "traces", "train").to_pylist()
    steps: dict[int, list] = {}
    for r in rows:
        steps.setdefault(r["step"], []).append((r["prompt_id"], r["sample_index"], r["weight_version"]))
    return steps


def test_async_run_resume_and_learner_failure(tmp_path, smoke_start):
    import ray

    from pipelines.data.cursor import DataCursor
    from pipelines.errors import RunStopped
    from pipelines.training.grpo_loop import GRPOTrainer, run_training

    full = tmp_path / "full"
    cfg = _cfg(smoke_start, full)
    run_training(cfg)

    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["weight_version_lag"] for r in rows] == [0, 1, 1], "batches after the first are one version behind"
    assert [r["queue_depth"] for r in rows] == [1, 1, 0], "one batch samples ahead, none after the last step"
    assert [r["weight_version"] for r in rows] == [1, 2, 3]
    # On this machine's CPUs async mode splits the cores: the learner computes on its share only.
    from pipelines.launch import core_plan

    assert {r["learner_threads"] for r in rows} == {len(core_plan(cfg).learner[0])}

    steps = _batches(full)
    # Step 0 samples with version 0; step 1 was sampled while step 0 trained (version 0); step 2 with version 1.
    assert [sorted({v for *_, v in steps[s]}) for s in (0, 1, 2)] == [[0], [0], [1]]
    from pipelines.training.run_setup import ensure_data

    train, _ = ensure_data(cfg)
    cursor = DataCursor(len(train), cfg.trainer.prompts_per_step, seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    G = cfg.rollout.group_size
    for s in (0, 1, 2):
        want = [train[i].id for i in cursor.next_batch()]
        got = [pid for pid, *_ in steps[s]]
        assert got == [pid for pid in want for _ in range(G)], f"step {s} trained on the wrong prompts"

    # The step-1 checkpoint was written with step 2's batch already sampling: resuming must train on it.
    resumed = tmp_path / "resumed"
    trainer = GRPOTrainer(_cfg(smoke_start, resumed, [f"trainer.resume_from={full / 'checkpoints' / 'step_1'}",
                                                   "rollout.async=false", "cluster.colocate=true"]))
    try:
        trainer.setup()
        trainer.train()
        rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
        assert [r["weight_version"] for r in rows] == [2, 3]
        assert [r["weight_version_lag"] for r in rows] == [0, 0], "colocated mode is on policy"
        assert [r["queue_depth"] for r in rows] == [0, 0], "sync mode samples nothing ahead"
        assert all("sleep_seconds" in r and "wake_seconds" in r and "push_seconds" in r for r in rows)
        workers = trainer.ctx.rollout.workers
        assert not any(ray.get([w.is_sleeping.remote() for w in workers])), "engines must be awake between steps"
        assert set(ray.get([w.get_weight_version.remote() for w in workers])) == {3}
        again = _batches(resumed)
        assert sorted(again) == [1, 2], "the resumed run trains steps 2 and 3 only"
        for s in (1, 2):
            assert [x[:2] for x in again[s]] == [x[:2] for x in steps[s]], f"step {s + 1} batch differs on resume"

        # A learner rank that dies stops the run and names where to resume from.
        ray.kill(trainer.ctx.learners.workers[0], no_restart=True)
        with pytest.raises(RunStopped) as err:
            trainer.train_step()
        msg = str(err.value)
        assert "learner failed" in msg and f"trainer.resume_from={resumed / 'checkpoints' / 'final'}" in msg, msg
    finally:
        trainer.shutdown()
