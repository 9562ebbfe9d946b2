"""The config checks that types alone cannot express: impossible or contradictory settings,
refused with the reason before anything starts."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pipelines.choices import TRACKER_PACKAGES, Placement, SyncBackend
from pipelines.errors import ConfigError


def validate(cfg: Any) -> None:
    """Checks that types alone cannot express."""
    problems = []
    if not str(cfg.trainer.output_dir).strip():
        problems.append("trainer.output_dir is empty (where would the run write?)")
    if cfg.rollout.group_size < 2:
        problems.append("rollout.group_size must be >= 2 (GRPO compares completions within a group)")
    if cfg.rollout.num_workers < 1:
        problems.append("rollout.num_workers must be >= 1")
    if cfg.learner.num_workers < 1:
        problems.append("learner.num_workers must be >= 1")
    if cfg.reward.num_workers < 1:
        problems.append("reward.num_workers must be >= 1")
    if not 0.0 <= cfg.model.pretrain.reading <= 1.0:
        problems.append(f"model.pretrain.reading is a share of each batch: in [0, 1] (got {cfg.model.pretrain.reading})")
    if not 0.0 <= cfg.model.pretrain.text_reading <= 4.0:
        problems.append("model.pretrain.text_reading adds that share of each batch's size as text-only items: "
                        f"in [0, 4] (got {cfg.model.pretrain.text_reading})")
    if cfg.learner.max_tokens_per_micro_batch < 0:
        problems.append("learner.max_tokens_per_micro_batch must be >= 0 (0: micro_batch_size samples per micro-batch)")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        problems.append(f"learner.zero_stage must be one of 0, 1, 2, 3 (got {cfg.learner.zero_stage})")
    lora = cfg.learner.lora
    if lora.rank < 0 or lora.alpha <= 0 or not (0.0 <= lora.dropout < 1.0) or (lora.rank and not lora.target_modules):
        problems.append("learner.lora: rank >= 0 (0 = off), alpha > 0, dropout in [0, 1) and target_modules non-empty")
    if lora.rank > 0 and cfg.learner.zero_stage == 3:
        # The merged push computes W + scale * B @ A per layer from full tensors; ZeRO-3 partitions them.
        problems.append("learner.lora.rank > 0 needs learner.zero_stage <= 2 (the adapter is small; ZeRO-2 shards "
                        "its optimizer state)")
    if not (0.0 <= cfg.grpo.clip_low < 1.0) or cfg.grpo.clip_high < 0.0:
        problems.append("grpo.clip_low must be in [0, 1) and grpo.clip_high >= 0")
    if cfg.grpo.beta < 0 or cfg.grpo.kl_clamp < 0:
        problems.append("grpo.beta and grpo.kl_clamp must be >= 0")
    if cfg.grpo.updates_per_batch < 1 or cfg.grpo.mini_batches < 1:
        problems.append("grpo.updates_per_batch and grpo.mini_batches must be >= 1")
    if cfg.trainer.prompts_per_step < 1:
        problems.append("trainer.prompts_per_step must be >= 1")
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
    if cfg.cluster.rollout_cores < 0:
        problems.append("cluster.rollout_cores must be >= 0 (0 gives the rollout actors half the cores in async mode)")
    if cfg.rollout.sleep_level not in (1, 2):
        problems.append(f"rollout.sleep_level must be 1 or 2 (got {cfg.rollout.sleep_level})")
    problems += weight_sync_problems(cfg)
    if not cfg.reward.functions:
        problems.append("reward.functions is empty: name at least one reward")
    if cfg.trainer.keep_last_n < 0:
        problems.append("trainer.keep_last_n must be >= 0 (0 keeps every checkpoint)")
    g = cfg.grpo
    if g.dynamic_sampling and cfg.rollout.async_mode:
        problems.append("grpo.dynamic_sampling=true with rollout.async_mode=true: re-sampling draws more prompts "
                        "while later batches are already drawn and sampling ahead, so a step's data would depend on "
                        "the queue and a checkpoint's data cursor would not say what was trained; choose one")
    if g.dynamic_sampling_max_tries < 0:
        problems.append("grpo.dynamic_sampling_max_tries must be >= 0")
    if not (0 <= g.overlong_buffer <= cfg.rollout.max_new_tokens) or g.overlong_penalty < 0:
        problems.append(f"grpo.overlong_buffer must be in [0, rollout.max_new_tokens = {cfg.rollout.max_new_tokens}] "
                        f"(got {g.overlong_buffer}) and grpo.overlong_penalty >= 0 (got {g.overlong_penalty})")
    missing = [f"{n} (pip install {TRACKER_PACKAGES[n][1]}, or -r requirements/trackers.txt)"
               for n in map(str, cfg.logging.trackers)
               if n in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[n][0]) is None]
    if missing:
        problems.append(f"logging.trackers lists trackers that are not installed: {', '.join(missing)}")
    if cfg.logging.trace_images_max_mb < 0:
        problems.append("logging.trace_images_max_mb must be >= 0 (0 keeps no image copies)")
    if cfg.logging.trace_signing_key and not Path(cfg.logging.trace_signing_key).is_file():
        problems.append(f"logging.trace_signing_key: no key file at {cfg.logging.trace_signing_key} "
                        f"(make one with `medr1 trace keygen FILE`)")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def sync_backend(cfg: Any) -> SyncBackend:
    """``weight_sync.backend`` with ``auto`` resolved: ``shm`` when the run starts its own one-node Ray
    on CPUs (learner and engines share the machine; bench/bench_push.py measures it faster than
    object_store there), else ``object_store`` (any placement, ZeRO-3 too)."""
    backend = SyncBackend(cfg.weight_sync.backend)
    if backend != SyncBackend.auto:
        return backend
    ro, le = cfg.rollout.resources_per_worker, cfg.learner.resources_per_worker
    # cluster.connect starts a one-machine Ray for these (None: unless inside a Ray job, which sets RAY_ADDRESS)
    local = cfg.cluster.address == "local" or (cfg.cluster.address is None and not os.environ.get("RAY_ADDRESS"))
    cpu = ro.num_gpus <= 0 and le.num_gpus <= 0
    return SyncBackend.shm if local and cpu and cfg.learner.zero_stage <= 2 else SyncBackend.object_store


def weight_sync_problems(cfg: Any) -> list[str]:
    """Weight-push and engine-placement combinations that cannot work, found before anything starts."""
    ws, ro, le = cfg.weight_sync, cfg.rollout, cfg.learner
    gpus_ro, gpus_le = ro.resources_per_worker.num_gpus, le.resources_per_worker.num_gpus
    backend, tp = sync_backend(cfg), ro.tensor_parallel_size
    problems = []
    if backend == SyncBackend.shm and cfg.cluster.placement_strategy in (Placement.SPREAD, Placement.STRICT_SPREAD):
        problems.append(f"weight_sync.backend=shm needs learner rank 0 and every rollout engine on one node, but "
                        f"cluster.placement_strategy={cfg.cluster.placement_strategy} spreads them over nodes; use "
                        "PACK or STRICT_PACK, or weight_sync.backend=object_store (gloo) across nodes")
    if ws.timeout_s <= 0 or ws.bucket_size_mb < 1 or ws.every_n_steps < 1:
        problems.append("weight_sync.timeout_s must be > 0, weight_sync.bucket_size_mb and every_n_steps >= 1")
    if backend in (SyncBackend.nccl, SyncBackend.ipc) and (gpus_ro <= 0 or gpus_le <= 0):
        problems.append(f"weight_sync.backend={backend} moves weights between GPUs: set "
                        "rollout.resources_per_worker.num_gpus and learner.resources_per_worker.num_gpus > 0 "
                        "(on CPUs use gloo or object_store)")
    if backend == SyncBackend.nccl and cfg.cluster.colocate:
        problems.append("weight_sync.backend=nccl with cluster.colocate=true: learner rank 0 and rollout-0 would "
                        "join one NCCL group from the same GPU, which NCCL refuses; use weight_sync.backend=ipc")
    if backend == SyncBackend.ipc and not cfg.cluster.colocate:
        problems.append("weight_sync.backend=ipc shares GPU memory within a device: it needs cluster.colocate=true "
                        "(separate devices: use nccl)")
    if backend == SyncBackend.ipc and cfg.cluster.colocate and ro.num_workers != le.num_workers:
        problems.append(f"weight_sync.backend=ipc: every engine needs a learner rank on its GPU; set "
                        f"rollout.num_workers ({ro.num_workers}) = learner.num_workers ({le.num_workers})")
    if backend != SyncBackend.object_store and le.zero_stage == 3:
        problems.append(f"weight_sync.backend={backend} sends from learner rank 0, which holds full weights only "
                        "with learner.zero_stage <= 2; use weight_sync.backend=object_store with ZeRO-3")
    if tp < 1:
        problems.append(f"rollout.tensor_parallel_size must be >= 1 (got {tp})")
    elif tp > 1 and gpus_ro <= 0:
        problems.append(f"rollout.tensor_parallel_size={tp} needs GPUs (vLLM's CPU backend runs one device)")
    elif tp > 1 and gpus_ro != tp:
        problems.append(f"rollout.tensor_parallel_size={tp}: each rollout actor runs its {tp} tensor-parallel "
                        f"workers on the GPUs of its own bundle, so rollout.resources_per_worker.num_gpus must "
                        f"be {tp} (got {gpus_ro:g})")
    if tp > 1 and cfg.cluster.colocate:
        problems.append("cluster.colocate=true shares one device per slot, so rollout.tensor_parallel_size must be 1")
    return problems
