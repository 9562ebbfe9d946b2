"""The closed choices of the configuration, each defined once. OmegaConf refuses any
other value for a field typed with one of these enums, naming the valid ones."""
from __future__ import annotations

import enum


class PromptStyle(str, enum.Enum):
    think = "think"
    nothink = "nothink"
    think_after = "think_after"


class AdvantageScale(str, enum.Enum):
    group = "group"  # (r - mean_g) / (std_g + eps): GRPO as in the paper
    batch = "batch"  # (r - mean_g) / (std_batch + eps)
    none = "none"  # r - mean_g: Dr. GRPO


class KLEstimator(str, enum.Enum):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class LossAgg(str, enum.Enum):
    seq_mean_token_mean = "seq_mean_token_mean"  # paper / TRL 0.14
    token_mean = "token_mean"  # DAPO
    seq_sum_norm = "seq_sum_norm"  # Dr. GRPO


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SyncBackend(str, enum.Enum):
    object_store = "object_store"  # CPU path: safetensors bytes through Ray's object store
    nccl = "nccl"  # GPU path: bucketed NCCL broadcast into vLLM


class Placement(str, enum.Enum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


class OptionOrder(str, enum.Enum):
    shuffled = "shuffled"  # the answer at a balanced random letter, as in Med-R1's data
    fixed = "fixed"  # options in their category's order (e.g. Grade 0..3)
    canonical = "canonical"  # every class of the category, in its order: a class always has one letter


class OnBadRecord(str, enum.Enum):
    error = "error"
    skip = "skip"


class LRSchedule(str, enum.Enum):
    constant = "constant"  # after the warm-up, if any
    cosine = "cosine"
    linear = "linear"
