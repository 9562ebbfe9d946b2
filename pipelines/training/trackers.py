"""Experiment trackers beside metrics.jsonl: Weights & Biases and MLflow (``logging.trackers``).

Both are optional extras (``requirements/trackers.txt``), imported only when listed, and
default to modes that need no network: W&B ``offline`` (a run directory under
``<output_dir>/wandb`` that ``wandb sync`` uploads later) and an MLflow file store at
``<output_dir>/mlruns`` (``mlflow ui --backend-store-uri`` reads it). Each receives the
resolved config once, every step's numeric metrics, and at the end the reward-curve PNG and
the evaluation tables. TensorBoard and the Ray-dashboard gauges stay in
``pipelines/training/metrics.py``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def eval_table(evals: list[dict]) -> tuple[list[str], list[list]]:
    """Rows of ``evals.jsonl`` as one table: (tag, step, group, name, accuracy, n) per cell."""
    columns = ["tag", "step", "group", "name", "accuracy", "n"]
    rows = []
    for e in evals:
        cells = [("overall", "all", e.get("overall", {}))]
        for group in ("by_modality", "by_question_type"):
            cells += [(group.removeprefix("by_"), name, cell) for name, cell in sorted(e.get(group, {}).items())]
        for group, name, cell in cells:
            if cell:
                rows.append([str(e.get("tag", "")), int(e.get("step", 0)), group, str(name),
                             float(cell["accuracy"]), int(cell["n"])])
    return columns, rows


class WandbTracker:
    def __init__(self, out: Path, *, run: str, project: str, mode: str, config: dict):
        import wandb

        self._wandb = wandb
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=run, dir=str(out), mode=mode, config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, images: dict[str, Path], tables: dict[str, tuple[list, list]]) -> None:
        payload: dict[str, Any] = {name: self._wandb.Image(str(p)) for name, p in images.items()}
        payload.update({name: self._wandb.Table(columns=cols, data=rows) for name, (cols, rows) in tables.items()})
        if payload:
            self.run.log(payload)
        self.run.finish()


class MLflowTracker:
    def __init__(self, out: Path, *, run: str, project: str, uri: str, config: dict):
        uri = uri or (out / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: it is the one backend that needs no
            # server and no database (mlflow-skinny ships no SQL driver).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._Metric = Metric
        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(project)
        self.run_id = self.client.create_run(exp_id, run_name=run).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(config).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        ms = [self._Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def finish(self, images: dict[str, Path], tables: dict[str, tuple[list, list]]) -> None:
        for p in images.values():
            self.client.log_artifact(self.run_id, str(p))
        for name, (cols, rows) in tables.items():
            self.client.log_table(self.run_id, data={c: [r[i] for r in rows] for i, c in enumerate(cols)},
                                  artifact_file=f"{name}.json")
        self.client.set_terminated(self.run_id)


def open_trackers(logging_cfg, out: Path, *, run: str, config: dict) -> list:
    """The W&B / MLflow trackers listed in ``logging.trackers`` (TensorBoard is MetricsLog's own)."""
    out = Path(out)
    found = []
    names = [str(n) for n in logging_cfg.trackers]
    if "wandb" in names:
        found.append(WandbTracker(out, run=run, project=logging_cfg.project, mode=str(logging_cfg.wandb_mode),
                                  config=config))
    if "mlflow" in names:
        found.append(MLflowTracker(out, run=run, project=logging_cfg.project, uri=logging_cfg.mlflow_tracking_uri,
                                   config=config))
    return found
