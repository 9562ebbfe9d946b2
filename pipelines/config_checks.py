"""The config checks that types alone cannot express: impossible or contradictory settings,
refused with the reason before anything starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.choices import SyncBackend
from pipelines.errors import ConfigError


def validate(cfg: Any) -> None:
    """Checks that types alone cannot express."""
    problems = []
    if cfg.rollout.group_size < 2:
        problems.append("rollout.group_size must be >= 2 (GRPO compares completions within a group)")
    if cfg.rollout.num_workers < 1:
        problems.append("rollout.num_workers must be >= 1")
    if cfg.learner.num_workers < 1:
        problems.append("learner.num_workers must be >= 1")
    if cfg.reward.num_workers < 1:
        problems.append("reward.num_workers must be >= 1")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        problems.append(f"learner.zero_stage must be one of 0, 1, 2, 3 (got {cfg.learner.zero_stage})")
    if not (0.0 <= cfg.grpo.clip_low < 1.0) or cfg.grpo.clip_high < 0.0:
        problems.append("grpo.clip_low must be in [0, 1) and grpo.clip_high >= 0")
    if cfg.grpo.beta < 0 or cfg.grpo.kl_clamp < 0:
        problems.append("grpo.beta and grpo.kl_clamp must be >= 0")
    if cfg.grpo.updates_per_batch < 1 or cfg.grpo.mini_batches < 1:
        problems.append("grpo.updates_per_batch and grpo.mini_batches must be >= 1")
    if cfg.trainer.prompts_per_step < 1:
        problems.append("trainer.prompts_per_step must be >= 1")
    if cfg.weight_sync.backend == SyncBackend.nccl and cfg.rollout.resources_per_worker.num_gpus <= 0:
        problems.append("weight_sync.backend=nccl needs GPUs: set rollout.resources_per_worker.num_gpus > 0")
    if cfg.rollout.async_mode and cfg.rollout.max_staleness < 1:
        problems.append("rollout.async_mode=true needs rollout.max_staleness >= 1 (batches sampled ahead are at "
                        "least one weight version old)")
    if cfg.cluster.colocate:
        ro, le = cfg.rollout.resources_per_worker, cfg.learner.resources_per_worker
        if ro.num_gpus + le.num_gpus > 1.0:
            problems.append(f"cluster.colocate=true shares one device per slot: rollout num_gpus ({ro.num_gpus}) + "
                            f"learner num_gpus ({le.num_gpus}) must be <= 1 (e.g. 0.5 each)")
    if cfg.cluster.colocate and cfg.rollout.async_mode:
        problems.append("cluster.colocate=true with rollout.async_mode=true: colocated engines sleep while the "
                        "learner runs, so there is nothing to overlap; choose one")
    if cfg.rollout.sleep_level not in (1, 2):
        problems.append(f"rollout.sleep_level must be 1 or 2 (got {cfg.rollout.sleep_level})")
    if cfg.weight_sync.backend == SyncBackend.nccl and cfg.learner.zero_stage == 3:
        problems.append("weight_sync.backend=nccl broadcasts from learner rank 0, which holds full weights only "
                        "with learner.zero_stage <= 2; use weight_sync.backend=object_store with ZeRO-3")
    if not cfg.reward.functions:
        problems.append("reward.functions is empty: name at least one reward")
    if cfg.trainer.keep_last_n < 0:
        problems.append("trainer.keep_last_n must be >= 0 (0 keeps every checkpoint)")
    if cfg.logging.trace_images_max_mb < 0:
        problems.append("logging.trace_images_max_mb must be >= 0 (0 keeps no image copies)")
    if cfg.logging.trace_signing_key and not Path(cfg.logging.trace_signing_key).is_file():
        problems.append(f"logging.trace_signing_key: no key file at {cfg.logging.trace_signing_key} "
                        f"(make one with `medr1 trace keygen FILE`)")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
