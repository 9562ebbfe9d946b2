"""The GRPO objective's options, defined by the math that uses them (no torch here, so
the config can import them cheaply). ``StrEnum``s: plain strings work wherever these do."""
from __future__ import annotations

import enum


class AdvantageScale(enum.StrEnum):
    group = "group"  # (r - mean_g) / (std_g + eps): GRPO as in the paper
    batch = "batch"  # (r - mean_g) / (std_batch + eps)
    none = "none"  # r - mean_g: Dr. GRPO


class KLEstimator(enum.StrEnum):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class LossAgg(enum.StrEnum):
    seq_mean_token_mean = "seq_mean_token_mean"  # paper / TRL 0.14
    token_mean = "token_mean"  # DAPO
    seq_sum_norm = "seq_sum_norm"  # Dr. GRPO


class RatioLevel(enum.StrEnum):
    token = "token"  # one importance ratio per token: GRPO / PPO, the paper
    sequence = "sequence"  # GSPO: one ratio per completion, the geometric mean of its token ratios
