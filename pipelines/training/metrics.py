"""Where step metrics go: metrics.jsonl (stable), TensorBoard, the Ray dashboard, the console."""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from torch.utils.tensorboard import SummaryWriter

from cluster.metrics import RayMetrics
from pipelines.figures import plt, save_figure
from pipelines.training.trackers import eval_table

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, ray_metrics: bool = True, run: str = "",
                 trackers: list | None = None):
        self.dir = Path(output_dir)
        self._trackers = list(trackers or [])  # pipelines/training/trackers.py: W&B, MLflow
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
            except Exception as e:  # TensorBoard is optional; the jsonl is the record
                log.warning("TensorBoard disabled: %s", e)
        self._ray = None
        if ray_metrics:
            try:
                self._ray = RayMetrics(run=run)
            except Exception as e:
                log.warning("Ray dashboard metrics disabled: %s", e)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._ray is not None:
            self._ray.record(numeric)
        for t in self._trackers:
            t.log(step, numeric)

    def close(self, reward_curve: Optional[Path] = None, evals: Optional[list[dict]] = None) -> None:
        """Flush and close; the trackers also get the reward curve and the evaluation table."""
        if self._tb is not None:
            self._tb.close()
        images = {"reward_curve": Path(reward_curve)} if reward_curve else {}
        tables = {"evals": eval_table(evals)} if evals else {}
        for t in self._trackers:
            t.finish(images, tables)
        self._trackers = []


@contextmanager
def timer(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall-clock seconds of the ``with`` block as ``timings[name]``."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def driver_overhead(step_s: float, phases: dict[str, float], previous_log_s: float = 0.0) -> dict[str, float]:
    """The part of a step the driver spends outside every timed phase: ``time_driver`` within the step,
    ``driver_overhead_s`` adding the logging of the step before (done between the two steps) and
    ``driver_overhead_share`` its fraction of that wall time."""
    inside = max(0.0, step_s - sum(phases.values()))
    total = inside + max(0.0, previous_log_s)
    wall = step_s + max(0.0, previous_log_s)
    return {"time_driver": inside, "driver_overhead_s": total,
            "driver_overhead_share": total / wall if wall > 0 else 0.0}


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_run_curve(run_dir: Path) -> Optional[Path]:
    """A run's reward curve (``reward_curve.png``) with its held-out accuracy points from ``evals.jsonl``."""
    evals = {e["step"]: e["overall"]["accuracy"] for e in read_metrics(run_dir / "evals.jsonl")}
    return plot_reward_curve(run_dir / "metrics.jsonl", run_dir / "reward_curve.png", evals)


def plot_reward_curve(metrics_path: str | Path, out_png: str | Path, evals: Optional[dict] = None) -> Optional[Path]:
    """Reward, accuracy and format rate per step (and held-out accuracy points if given)."""
    rows = [r for r in read_metrics(metrics_path) if "reward_mean" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["reward_mean"] for r in rows], label="reward (format + accuracy)", color="tab:blue")
    ax.plot(steps, [r.get("accuracy", float("nan")) for r in rows], label="train accuracy", color="tab:green")
    ax.plot(steps, [r.get("format_rate", float("nan")) for r in rows], label="format rate", color="tab:orange",
            alpha=0.7)
    for step, acc in sorted((evals or {}).items()):
        ax.scatter([step], [acc], color="black", zorder=3)
    if evals:
        ax.plot(sorted(evals), [evals[s] for s in sorted(evals)], "k--", label="held-out accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("GRPO training")
    return save_figure(fig, out_png)
