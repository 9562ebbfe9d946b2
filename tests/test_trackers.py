"""W&B (offline) and MLflow (file store) trackers, written through MetricsLog and read back.

The libraries are optional extras (requirements/trackers.txt, installed by `make test`)."""
from __future__ import annotations

import math

import pytest

from pipelines.choices import TRACKER_PACKAGES
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.training import trackers as trackers_mod
from pipelines.training.metrics import MetricsLog
from pipelines.training.trackers import eval_table, flatten

EVALS = [
    {"tag": "before", "step": 0, "overall": {"accuracy": 0.25, "n": 8},
     "by_modality": {"CT": {"accuracy": 0.5, "n": 4}, "MRI": {"accuracy": 0.0, "n": 4}}, "by_question_type": {}},
    {"tag": "after", "step": 2, "overall": {"accuracy": 0.5, "n": 8}, "by_modality": {},
     "by_question_type": {"modality": {"accuracy": 0.5, "n": 8}}},
]


def test_eval_table_one_row_per_cell():
    cols, rows = eval_table(EVALS)
    assert cols == ["tag", "step", "group", "name", "accuracy", "n"]
    assert rows == [["before", 0, "overall", "all", 0.25, 8], ["before", 0, "modality", "CT", 0.5, 4],
                    ["before", 0, "modality", "MRI", 0.0, 4], ["after", 2, "overall", "all", 0.5, 8],
                    ["after", 2, "question_type", "modality", 0.5, 8]]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}) == \
        {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": "x"}


def test_trackers_config_default_and_missing_package_refused(monkeypatch):
    assert load_config("smoke.yaml").logging.trackers == ["tensorboard"]
    # a tracker whose package is absent is refused before anything starts, saying what to install
    monkeypatch.setitem(TRACKER_PACKAGES, "mlflow", ("no_such_module_medr1", "mlflow-skinny"))
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        load_config("smoke.yaml", ["logging.trackers=[tensorboard,mlflow]"])
    with pytest.raises(ConfigError, match="logging.trackers"):
        load_config("smoke.yaml", ["logging.trackers=[neptune]"])


def _metrics(step):
    return {"reward_mean": 0.25 * step, "kl": 0.01 * step, "flag": True, "name": "x", "nan": float("nan")}


def test_metrics_log_to_wandb_offline_and_mlflow_file_store(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from wandb_records import offline_run

    from pipelines.figures import plt, save_figure

    cfg = load_config("smoke.yaml", ["logging.trackers=[wandb,mlflow]", f"trainer.output_dir={tmp_path}"])
    out = tmp_path / "run"
    ts = trackers_mod.open_trackers(cfg.logging, out, run="unit", config={"grpo": {"beta": 0.04}, "seed": 3})
    log = MetricsLog(out, tensorboard=False, ray_metrics=False, run="unit", trackers=ts)
    for step in (1, 2, 3):
        log.log(step, _metrics(step))
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    png = save_figure(fig, tmp_path / "curve.png")
    log.close(reward_curve=png, evals=EVALS)

    run = offline_run(out / "wandb")
    steps = [h for h in run["history"] if "reward_mean" in h]
    assert [(h["_step"], h["reward_mean"], h["kl"]) for h in steps] == [(1, 0.25, 0.01), (2, 0.5, 0.02), (3, 0.75, 0.03)]
    assert all("flag" not in h and "nan" not in h for h in steps), "only finite numbers are logged"
    assert run["config"]["grpo"] == {"beta": 0.04} and run["config"]["seed"] == 3
    media = {k for h in run["history"] for k in h}
    assert {"reward_curve/_type", "evals/_type"} <= media

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("medr1").experiment_id])
    assert mrun.info.run_name == "unit" and mrun.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, "reward_mean")] == \
        [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert mrun.data.params == {"grpo.beta": "0.04", "seed": "3"}
    assert not any(math.isnan(v) for v in mrun.data.metrics.values()) and "flag" not in mrun.data.metrics
    arts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"curve.png", "evals.json"} <= arts
