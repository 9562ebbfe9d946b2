"""The GRPO reference model: a frozen copy of the starting policy (only when beta > 0).

Under ZeRO-3 it is a second DeepSpeed engine with ZeRO-3 partitioning and no optimizer
(partitioned like the policy; its forward is collective); under stages 0-2 a plain full copy in
eval mode. Under LoRA there is no copy: the reference is the policy with its adapter disabled.
"""
from __future__ import annotations

import deepspeed

from learner.policy import load_policy


def build_reference(model_path: str, dtype, attn_implementation: str, stage: int, ds_config: dict, bf16: bool,
                    device, compute_dtype):
    ref = load_policy(model_path, dtype=dtype, attn_implementation=attn_implementation)
    ref.config.use_cache = False
    ref.requires_grad_(False)
    ref.eval()
    if stage != 3:
        return ref.to(device=device, dtype=compute_dtype)
    ref_cfg = {"train_micro_batch_size_per_gpu": ds_config["train_micro_batch_size_per_gpu"],
               "gradient_accumulation_steps": ds_config["gradient_accumulation_steps"],
               "train_batch_size": ds_config["train_batch_size"],
               "zero_optimization": {"stage": 3, "overlap_comm": False},
               "bf16": {"enabled": bool(bf16)},
               "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
    engine.eval()
    return engine


def adapter_disabled_logprobs(module, logprobs, batch):
    """Reference log-probs of a LoRA policy: its base, the adapter disabled (eval mode meanwhile)."""
    was_training = module.training
    module.eval()
    try:
        with module.disable_adapter():
            return logprobs(module, batch)[0]
    finally:
        module.train(was_training)
