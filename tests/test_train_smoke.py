"""`medr1 train configs/smoke.yaml` end to end with real Ray, vLLM and DeepSpeed:
format warm-start, two GRPO steps with two rollout actors, held-out eval before
and after, and every stable output in place."""
from __future__ import annotations

import json
import math
import os

import pytest

pytestmark = pytest.mark.slow


def test_smoke_run(smoke_run):
    """The session's smoke run (tests/conftest.py: built from nothing, a checkpoint each step)."""
    import pyarrow.parquet as pq

    from pipelines.models.tiny import is_model_dir
    from pipelines.traces import read_traces

    out, cfg, summary, tmp_path = smoke_run.out, smoke_run.cfg, smoke_run.summary, smoke_run.root

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["weight_version"] for r in rows] == [1, 2], "each step must push and bump the weight version"
    # The default verifies the first push (tests/test_train_algo_smoke.py verifies every push over gloo).
    assert [r.get("weight_verified") for r in rows] == [1.0, None]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
        for key in ("reward_mean", "accuracy", "format_rate", "time_rollout", "time_reward", "time_learner",
                    "time_push", "time_driver", "rollout_tokens_per_s", "dead_group_fraction", "clip_fraction"):
            assert key in r, key
        assert 0 <= r["time_driver"] < r["time_step"]
        # Driver overhead: outside every phase, the logging of the step before included.
        assert r["time_driver"] <= r["driver_overhead_s"] and 0 <= r["driver_overhead_share"] < 1
        assert r["learner_threads"] == len(os.sched_getaffinity(0)), "a sync learner phase computes on every core"

    train = read_traces(out / "traces", "train").to_pylist()
    G, B = cfg.rollout.group_size, cfg.trainer.prompts_per_step
    assert len(train) == 2 * B * G, "one trace row per completion"
    assert all(math.isfinite(t["reward"]) and t["reward_components"] for t in train), "every completion has a reward"
    # Scores are streamed per rollout shard (scored as each actor returns): each must land on its own completion.
    from rewards import combined_scores

    want = combined_scores([t["completion"] for t in train], [t["answer"] for t in train], dict(cfg.reward.functions))
    assert [t["reward"] for t in train] == pytest.approx([s.total for s in want])
    assert {t["weight_version"] for t in train} == {0, 1}, "rollouts carry the version that produced them"
    assert all(len(t["image_sha256"]) == 64 and t["completion"] is not None for t in train)

    evals = read_traces(out / "traces", "eval").to_pylist()
    assert {e["weight_version"] for e in evals} == {0, 2}
    for tag in ("before", "after"):
        assert summary[tag]["n"] > 0 and 0.0 <= summary[tag]["overall"]["accuracy"] <= 1.0
        assert summary[tag]["by_modality"] and summary[tag]["by_question_type"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["after"]["overall"] == summary["after"]["overall"]
    assert is_model_dir(out / "checkpoints" / "final" / "hf")
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert pq.read_schema(next((out / "traces").glob("train-*.parquet"))).names[:3] == ["run", "kind", "step"]

    # Provenance and tamper evidence: the chains verify against the head the run recorded, every row
    # cites the weights it was sampled with, and the final version's hash is the saved weights' hash.
    from learner.weights_digest import safetensors_digest
    from pipelines.tracing.verify import verify_store

    v = verify_store(out / "traces", heads=(on_disk["trace_head"],))
    assert v.ok, v.problems
    assert json.loads((out / "checkpoints" / "final" / "trace" / "HEADS.json").read_text())["heads"] == \
        on_disk["trace_heads"], "the final checkpoint seals the heads the summary records"
    final_sha = safetensors_digest(str(out / "checkpoints" / "final" / "hf" / "model.safetensors"))
    assert {e["weights_sha256"] for e in evals if e["weight_version"] == 2} == {final_sha}
    by_version = {}
    for t in train + evals:
        by_version.setdefault(t["weight_version"], set()).add(t["weights_sha256"])
    assert all(len(s) == 1 and len(next(iter(s))) == 64 for s in by_version.values()), by_version
    start_sha = safetensors_digest(str(tmp_path / "warm" / "hf" / "model.safetensors"))
    assert by_version[0] == {start_sha}, "version 0 names the weights the run started from"
    assert start_sha != final_sha
    t0 = train[0]
    assert t0["record_index"] >= 0 and t0["dataset"].endswith(":train") and len(t0["config_sha256"]) == 64
    assert t0["code_version"].startswith("medr1-ray") and json.loads(t0["sampling"])["n"] == G
    assert t0["seed"] >= 0 and t0["image_file"] and (out / "traces" / t0["image_file"]).is_file()
