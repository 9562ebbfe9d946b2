"""The DeepSpeed config and the LR schedule of the learner (see ``learner/deepspeed_learner.py``)."""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from transformers import get_scheduler

# Our schedule names -> transformers' (ours warm up whichever schedule follows, "constant" included).
_SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def build_scheduler(optimizer, schedule: str, total_steps: int, warmup_ratio: float):
    """transformers' LR schedule over ``total_steps`` optimizer steps, warming up for ``warmup_ratio`` of them.

    Our warm-up never trains at lr 0: optimizer step s (from 0) warms up at (s + 1) / (warmup + 1).
    transformers' warm-up starts at 0, so its schedule runs one step ahead over one step more
    (warmup + 1 warm-up steps of total + 1): the same curve, step for step."""
    total = max(int(total_steps), 1)
    warmup = int(math.ceil(warmup_ratio * total)) if warmup_ratio > 0 else 0
    sched = get_scheduler(_SCHEDULERS[str(schedule)], optimizer, num_warmup_steps=warmup + 1,
                          num_training_steps=total + 1)
    with warnings.catch_warnings():  # "step() before optimizer.step()": this step only moves the schedule
        warnings.simplefilter("ignore")
        sched.step()
    return sched


def build_ds_config(learner_cfg, *, world_size: int, samples_per_step_per_rank: int,
                    client_optimizer: bool) -> dict:
    mb = int(learner_cfg.micro_batch_size)
    gas = max(1, math.ceil(samples_per_step_per_rank / mb))
    stage = int(learner_cfg.zero_stage)
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        zero.update({"contiguous_gradients": True, "overlap_comm": False, "reduce_scatter": True})
    if stage == 3:
        zero.update({"contiguous_gradients": True, "overlap_comm": False,
                     "stage3_gather_16bit_weights_on_model_save": False})
    if learner_cfg.offload_optimizer:
        if stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": mb,
        "gradient_accumulation_steps": gas,
        "train_batch_size": mb * gas * world_size,
        "gradient_clipping": float(learner_cfg.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": bool(learner_cfg.bf16)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if not client_optimizer:
        cfg["optimizer"] = {"type": "AdamW", "params": {
            "lr": float(learner_cfg.lr), "betas": [float(b) for b in learner_cfg.adam_betas],
            "eps": 1e-8, "weight_decay": float(learner_cfg.weight_decay)}}
    return cfg
