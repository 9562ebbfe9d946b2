"""Create and address the R rollout actors (named ``rollout-0`` ... for the dashboard)."""
from __future__ import annotations

import os
from typing import Any, Optional

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.rollout_worker import RolloutActor


def cpu_core_binding(index: int, num_workers: int, num_cores: Optional[int] = None) -> str:
    """Cores for rollout worker ``index`` when vLLM runs on the CPU.

    Workers generate at the same time, so each gets its own cores rather than all
    fighting over every core (OpenMP threads spin; oversubscription is slow).
    """
    cores = num_cores or os.cpu_count() or 1
    if num_workers >= cores:
        return str(index % cores)
    per = cores // num_workers
    start = index * per
    return f"{start}-{start + per - 1}" if per > 1 else str(start)


def create_rollout_workers(
    num_workers: int,
    engine_kwargs: dict[str, Any],
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    custom_resources: Optional[dict[str, float]] = None,
    env_vars: Optional[list[dict[str, str]]] = None,
    placement_group=None,
    bundle_indices: Optional[list[int]] = None,
    weight_version: int = 0,
    initial_weights=None,
    max_restarts: int = 0,
    name_prefix: str = "rollout",
) -> list:
    workers = []
    for i in range(num_workers):
        options: dict[str, Any] = dict(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=dict(custom_resources or {}),
            name=f"{name_prefix}-{i}",
            max_restarts=max_restarts,
            max_concurrency=1,
        )
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars[i]}
        if placement_group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=placement_group,
                placement_group_bundle_index=bundle_indices[i] if bundle_indices else -1,
            )
        workers.append(RolloutActor.options(**options).remote(i, engine_kwargs, weight_version, initial_weights))
    return workers


def wait_ready(workers: list, timeout: float = 900.0) -> list[dict]:
    return ray.get([w.ready.remote() for w in workers], timeout=timeout)
