"""Step metrics to the Ray dashboard / Prometheus through ``ray.util.metrics``.

Each numeric key of a step's metrics dict becomes a gauge ``medr1_<name>``
tagged with ``run`` (and any extra tags given). Ray's exporter prefixes
application metrics with ``ray_``, so Prometheus and Grafana show them as
``ray_medr1_reward_mean{run="..."}``; the dashboard's Metrics view shows them
once Prometheus scrapes the head (``--metrics-export-port``).

Where the metrics are recorded: directly from the calling process. A driver
(e.g. the entrypoint of ``ray job submit``) is a Ray core worker like any
other and its metrics are exported through the node's metrics agent; this
was verified against a ``ray start --head`` on Ray 2.60 (see
``tests/test_jobs.py::test_job_submission_logs_and_driver_metrics_reach_prometheus``).

Metrics must never stop training: every failure is caught, logged once, and
the step goes on.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping, Optional

import ray
from ray.util.metrics import Counter, Gauge

log = logging.getLogger(__name__)

PREFIX = "medr1_"

# What the training driver records each step; the descriptions show up in Prometheus' HELP lines.
KNOWN_METRICS: dict[str, str] = {
    "reward_mean": "mean total reward over the step's completions",
    "reward_std": "standard deviation of the total reward",
    "accuracy": "fraction of completions whose answer letter is right",
    "format_rate": "fraction of completions in the <think>/<answer> format",
    "kl": "mean KL to the reference policy (estimator from grpo.kl_estimator)",
    "loss": "GRPO loss",
    "clip_fraction": "fraction of tokens whose ratio was clipped",
    "grad_norm": "gradient norm before clipping",
    "lr": "learning rate",
    "completion_length": "mean completion length in tokens",
    "rollout_tokens_per_s": "generated tokens per second over all rollout workers",
    "time_rollout": "seconds spent sampling this step",
    "time_reward": "seconds spent scoring this step",
    "time_learner": "seconds spent in the learner update this step",
    "time_push": "seconds spent pushing weights to the rollout workers",
    "time_step": "seconds for the whole step",
    "weight_version": "weight version the rollout workers hold",
    "queue_depth": "rollout batches sampling ahead of the learner (async mode; 0 in sync mode)",
    "rollout_restarts": "rollout worker restarts so far",
    "dead_group_fraction": "fraction of groups whose rewards are all equal (zero advantage)",
    "step": "training step",
}

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(key: str, prefix: str = PREFIX) -> str:
    """``"time/rollout-s"`` -> ``"medr1_time_rollout_s"``: a valid Prometheus/Ray metric name."""
    name = _NAME_RE.sub("_", str(key)).strip("_")
    name = re.sub(r"_+", "_", name) or "unnamed"
    if name.startswith(prefix):
        name = name[len(prefix):]
    return prefix + name


def _as_float(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy / torch scalars
        try:
            return float(value.item())
        except Exception:
            return None
    return None


def numeric_items(step_metrics: Mapping[str, Any]) -> dict[str, float]:
    """Only the entries that are numbers (bools count as 0/1); non-finite values are dropped."""
    out = {}
    for k, v in step_metrics.items():
        f = _as_float(v)
        if f is not None and math.isfinite(f):
            out[str(k)] = f
    return out


class _GaugeSet:
    """Gauges created on first use, each with the tag keys it was first recorded with."""

    def __init__(self, prefix: str = PREFIX):
        self.prefix = prefix
        self.gauges: dict[str, Any] = {}
        self.tag_keys: dict[str, tuple[str, ...]] = {}
        self.steps = None

    def record(self, values: dict[str, float], tags: dict[str, str]) -> list[str]:
        errors = []
        for key, value in values.items():
            name = metric_name(key, self.prefix)
            try:
                g = self.gauges.get(name)
                if g is None:
                    keys = tuple(sorted(tags))
                    desc = KNOWN_METRICS.get(name[len(self.prefix):], f"medr1 step metric '{key}'")
                    g = self.gauges[name] = Gauge(name, description=desc, tag_keys=keys)
                    self.tag_keys[name] = keys
                keys = self.tag_keys[name]
                g.set(value, tags={k: tags.get(k, "") for k in keys})
            except Exception as e:  # one bad metric must not hide the others
                errors.append(f"{name}: {type(e).__name__}: {e}")
        try:
            if self.steps is None:
                self.steps = Counter(self.prefix + "steps", description="training steps recorded", tag_keys=("run",))
            self.steps.inc(1.0, tags={"run": tags.get("run", "")})
        except Exception as e:
            errors.append(f"{self.prefix}steps: {type(e).__name__}: {e}")
        return errors


class RayMetrics:
    """Exports step metrics as Ray gauges ``medr1_<name>{run=<run>}``.

    ``record`` never raises: a failure is logged once (with what failed) and
    training goes on. Without a running Ray it does nothing.
    """

    def __init__(self, run: str, *, prefix: str = PREFIX, default_tags: Optional[dict[str, str]] = None,
                 enabled: bool = True):
        self.run = str(run)
        self.prefix = prefix
        self.default_tags = {k: str(v) for k, v in (default_tags or {}).items()}
        self.enabled = enabled
        self._local: Optional[_GaugeSet] = None
        self._warned = False
        self.failures = 0

    def _warn_once(self, msg: str) -> None:
        self.failures += 1
        if not self._warned:
            self._warned = True
            log.warning("Ray metrics export failed (training continues; further failures are not logged): %s", msg)

    def _ray_ready(self) -> bool:
        try:
            return ray.is_initialized()
        except Exception:
            return False

    def record(self, step_metrics: Mapping[str, Any], tags: Optional[Mapping[str, Any]] = None) -> None:
        if not self.enabled or not step_metrics:
            return
        try:
            if not self._ray_ready():
                return
            values = numeric_items(step_metrics)
            if not values:
                return
            all_tags = {**self.default_tags, **{str(k): str(v) for k, v in (tags or {}).items()}, "run": self.run}
            if self._local is None:
                self._local = _GaugeSet(self.prefix)
            errors = self._local.record(values, all_tags)
            if errors:
                self._warn_once("; ".join(errors[:5]))
        except Exception as e:
            self._warn_once(f"{type(e).__name__}: {e}")
