"""`medr1 train configs/smoke.yaml logging.trackers=[tensorboard,wandb,mlflow]` end to end with real Ray,
vLLM and DeepSpeed: the run's step metrics are read back from the W&B offline files and the MLflow file
store and equal metrics.jsonl; TensorBoard keeps working beside them."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_smoke_run_reaches_wandb_offline_and_mlflow_file_store(tmp_path, ray_session):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from wandb_records import offline_run

    from pipelines.config import load_config
    from pipelines.training.grpo_loop import run_training

    out = tmp_path / "run"
    cfg = load_config("smoke.yaml", [
        f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}", f"data.prepared_dir={tmp_path / 'data'}",
        f"sft.warmstart_dir={tmp_path / 'warm'}", "logging.progress=false",
        "logging.trackers=[tensorboard,wandb,mlflow]", "logging.tensorboard=true"])
    run_training(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
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
