"""From a config to running actors: the resource plan, the Ray connection, the vLLM
engine arguments and the rollout actors. Shared by training, evaluation and the protocol."""
from __future__ import annotations

import os
from typing import Any, Optional

from actors.rollout import cpu_core_binding, create_rollout_workers, wait_ready
from actors.vllm_engine import cpu_engine_env
from cluster.connect import PROJECT_ROOT, connect, is_local
from cluster.cores import CORES_ENV, CorePlan, cores_text, plan_cores
from cluster.resources import ResourcePlan, RoleSpec
from pipelines.config_checks import sync_backend

REWARD_WORKER_CPUS = 0.5


def resource_plan(cfg) -> ResourcePlan:
    r, l = cfg.rollout.resources_per_worker, cfg.learner.resources_per_worker
    return ResourcePlan(
        roles=[
            RoleSpec("rollout", cfg.rollout.num_workers, r.num_cpus, r.num_gpus, dict(r.custom)),
            RoleSpec("learner", cfg.learner.num_workers, l.num_cpus, l.num_gpus, dict(l.custom)),
            RoleSpec("reward", cfg.reward.num_workers, REWARD_WORKER_CPUS),
        ],
        strategy=cfg.cluster.placement_strategy,
        colocate=cfg.cluster.colocate,
    )


def engine_kwargs(cfg, model_path: str) -> dict[str, Any]:
    ro = cfg.rollout
    return dict(
        model_path=model_path,
        dtype=cfg.model.dtype,
        max_model_len=cfg.data.max_prompt_length + ro.max_new_tokens,
        seed=ro.seed,
        enforce_eager=ro.enforce_eager,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        kv_cache_memory_bytes=ro.kv_cache_memory_bytes if ro.resources_per_worker.num_gpus == 0 else None,
        max_num_seqs=ro.max_num_seqs,
        tensor_parallel_size=ro.tensor_parallel_size,
        min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels,
        trust_remote_code=cfg.model.trust_remote_code,
        enable_sleep=cfg.cluster.colocate,
        weight_sync=str(sync_backend(cfg)),
        cpu_linear=str(ro.cpu_linear),
    )


def core_plan(cfg) -> Optional[CorePlan]:
    """The cores of each rollout actor and learner rank (cluster/cores.py) when both compute on this
    machine's CPUs: every core per phase in the synchronous loop, disjoint sets in async mode.
    None for GPU roles, a remote cluster (its nodes' cores are not known here) or colocation."""
    ro, le = cfg.rollout.resources_per_worker, cfg.learner.resources_per_worker
    if ro.num_gpus or le.num_gpus or cfg.cluster.colocate or not is_local(cfg.cluster.address):
        return None
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return plan_cores(cores, cfg.rollout.num_workers, cfg.learner.num_workers, overlap=cfg.rollout.async_mode,
                      rollout_cores=cfg.cluster.rollout_cores)


def rollout_env(cfg, index: int, cores: Optional[list[int]] = None) -> dict[str, str]:
    """A rollout actor's env; ``cores`` (from ``core_plan``) pins it and its vLLM threads there."""
    env = {k: str(v) for k, v in cfg.cluster.runtime_env_vars.items()}
    if cfg.rollout.resources_per_worker.num_gpus == 0:
        binding = cores_text(cores) if cores else cpu_core_binding(index, cfg.rollout.num_workers)
        env.update(cpu_engine_env(binding))
        if cores:
            env[CORES_ENV] = binding
    return env


def start_eval_workers(cfg, model_path: str, num_workers: int, max_new_tokens: int) -> list:
    """R rollout actors on ``model_path`` (CPU cores split between them when on the CPU)."""
    cfg.rollout.num_workers = num_workers  # rollout_env splits cores by it
    kwargs = engine_kwargs(cfg, model_path)
    kwargs["max_model_len"] = int(cfg.data.max_prompt_length + max_new_tokens)
    ro = cfg.rollout.resources_per_worker
    envs = []
    for i in range(num_workers):
        env = rollout_env(cfg, i)
        # Ray may have been started by someone else (a test, a notebook) without this project on its path.
        env.setdefault("PYTHONPATH", os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p))
        envs.append(env)
    workers = create_rollout_workers(num_workers, kwargs, num_cpus=ro.num_cpus, num_gpus=ro.num_gpus,
                                     custom_resources=dict(ro.custom), env_vars=envs, name_prefix="eval-rollout",
                                     max_restarts=3)  # a dead one comes back and its prompts are re-issued
    wait_ready(workers)
    return workers


def connect_ray(cfg, wanted_cpus: float = 1.0) -> dict:
    """Start or join Ray as ``cfg.cluster`` says; a local cluster declares at least ``wanted_cpus``."""
    c = cfg.cluster
    return connect(c.address, num_cpus=c.num_cpus, wanted_cpus=wanted_cpus, dashboard_host=c.dashboard_host,
                   env_vars=dict(c.runtime_env_vars))
