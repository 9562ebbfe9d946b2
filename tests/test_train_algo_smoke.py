"""`medr1 train configs/smoke.yaml` with the non-default choices on, end to end with real Ray, vLLM and
DeepSpeed, in one run (each smoke run costs minutes of CI):

- the algorithm knobs: GSPO's sequence ratio, DAPO dynamic sampling (re-sampling seen in the metrics),
  the overlong filter, and the strict format reward (the soft overlong penalty is left off: on 32-token
  completions it makes almost every group's rewards unequal, so nothing would be re-sampled);
- the weight push over gloo with every push verified (`weight_verified` = 1 at each step);
- the trackers: the step metrics read back from the W&B offline files and the MLflow file store equal
  metrics.jsonl, and TensorBoard keeps writing beside them."""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_smoke_run_with_algorithm_knobs_gloo_push_and_trackers(tmp_path, smoke_start):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from pipelines.config import load_config
    from pipelines.traces import read_traces
    from pipelines.training.grpo_loop import run_training

    out = tmp_path / "run"
    cfg = load_config("smoke.yaml", [
        f"trainer.output_dir={out}", *smoke_start, "logging.progress=false",
        "grpo.ratio_level=sequence", "grpo.dynamic_sampling=true", "grpo.dynamic_sampling_max_tries=3",
        "grpo.overlong_filter=true",
        # room for the warm-start's 21-token think layout (smoke's 16 cuts every one of them short)
        "rollout.max_new_tokens=32", "eval.max_new_tokens=32",
        # a dict override merges into the default {format: 1, accuracy_strict: 1}: weight 0 turns format off
        "reward.functions.format=0.0", "reward.functions.format_strict=1.0",
        "weight_sync.backend=gloo", "weight_sync.verify=every",
        "logging.trackers=[tensorboard,wandb,mlflow]", "logging.tensorboard=true"])
    run_training(cfg)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    B, G = cfg.trainer.prompts_per_step, cfg.rollout.group_size
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        print({k: r[k] for k in ("dynamic_sampling_tries", "groups_resampled", "groups_live", "groups_kept",
                                 "groups_short", "truncated_fraction", "overlong_filtered", "reward_mean",
                                 "reward_accuracy_strict", "reward_format_strict", "format_rate", "prompts")})
        assert 0 <= r["dynamic_sampling_tries"] <= 3
        assert r["groups_resampled"] == B * r["dynamic_sampling_tries"], "each extra round draws a full batch"
        assert r["prompts"] == B + r["groups_resampled"]
        assert r["groups_kept"] == min(r["groups_live"], B) and r["groups_short"] == B - r["groups_kept"]
        if r["groups_kept"]:
            # the learner saw exactly the kept groups' completions, less the truncated ones
            assert r["num_samples"] == G * r["groups_kept"] - r["overlong_filtered"]
            assert math.isfinite(r["loss"])
        assert "reward_format_strict" in r
        assert r.get("weight_verified") == 1.0, "every push over gloo verified"
    assert sum(r["dynamic_sampling_tries"] for r in rows) >= 1, "dead groups were re-sampled in neither step"

    train = read_traces(out / "traces", "train").to_pylist()
    assert len(train) == sum(r["prompts"] for r in rows) * G, "every sampled completion is traced, resampled too"
    for t in train:
        comps = json.loads(t["reward_components"])
        assert set(comps) == {"format", "format_strict", "accuracy_strict"}
        assert t["reward"] == comps["format_strict"] + comps["accuracy_strict"], "the strict format is what counts"

    _check_trackers(out, cfg, rows)


def _check_trackers(out, cfg, rows) -> None:
    from mlflow.tracking import MlflowClient
    from wandb_records import offline_run

    keys = ("reward_mean", "accuracy", "kl", "loss", "weight_version")
    wb = offline_run(out / "wandb")
    logged = {h["_step"]: h for h in wb["history"] if "reward_mean" in h}
    assert sorted(logged) == [1, 2]
    for r in rows:
        assert {k: logged[r["step"]][k] for k in keys} == pytest.approx({k: r[k] for k in keys})
    assert wb["config"]["grpo"]["beta"] == cfg.grpo.beta
    assert any("reward_curve/_type" in h for h in wb["history"]) and any("evals/_type" in h for h in wb["history"])

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("medr1").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    for k in keys:
        hist = client.get_metric_history(run.info.run_id, k)
        assert [m.step for m in hist] == [r["step"] for r in rows]
        assert [m.value for m in hist] == pytest.approx([float(r[k]) for r in rows])
    assert run.data.params["grpo.beta"] == str(cfg.grpo.beta)
    assert {"reward_curve.png", "evals.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard still writes"
