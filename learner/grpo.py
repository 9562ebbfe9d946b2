"""GRPO math: group advantages, KL estimators, clipped policy loss.

Pure torch, no distributed or inference imports, so it is testable in
milliseconds.  Shapes:

    rewards     [B*G]   G completions per prompt, grouped contiguously
    logp        [B, T]  log-prob of each sampled completion token (policy, with grad)
    old_logp    [B, T]  log-prob under the policy that sampled it (no grad)
    ref_logp    [B, T]  log-prob under the frozen reference model (no grad)
    mask        [B, T]  1 for real completion tokens, 0 for padding
    advantages  [B]     one scalar per completion, broadcast over its tokens

Here B is the number of completions in the micro-batch (not prompts).  Prompt
and image tokens are never part of these tensors.
"""

from __future__ import annotations

import torch

from learner.grpo_options import AdvantageScale, KLEstimator, LossAgg, RatioLevel

ADV_SCALES = tuple(str(s) for s in AdvantageScale)
KL_ESTIMATORS = tuple(str(s) for s in KLEstimator)
LOSS_AGGS = tuple(str(s) for s in LossAgg)
RATIO_LEVELS = tuple(str(s) for s in RatioLevel)


# -----------------------------------------------------------------------------
# advantages


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def dead_group_mask(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """BoolTensor[num_groups]: True where every reward in the group is equal.

    Such groups carry no learning signal (zero advantage); DAPO-style dynamic
    sampling drops them.
    """
    r = _grouped(rewards, group_size)
    return r.max(dim=1).values == r.min(dim=1).values


def _std(x: torch.Tensor, dim=None) -> torch.Tensor:
    # Unbiased (Bessel-corrected) std, torch's default and what TRL uses.  With a
    # single element it is undefined (NaN); we return 0 since there is no spread.
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim=dim))
    return x.std() if dim is None else x.std(dim=dim)


def compute_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict]:
    """Group-relative advantages, one per completion.

    scale="group": (r - group mean) / (group std + eps)       -- GRPO / Med-R1
    scale="batch": (r - group mean) / (batch std + eps)       -- std over all B*G rewards
    scale="none":  (r - group mean)                           -- Dr. GRPO, no std bias

    Groups whose rewards are all equal get exactly 0 (we zero them explicitly, so
    floating-point error in the mean cannot leak a tiny nonzero advantage).
    """
    if scale not in ADV_SCALES:
        raise ValueError(f"scale must be one of {ADV_SCALES}, got {scale!r}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    rewards = rewards.detach()
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    r = _grouped(rewards, group_size)
    dead = dead_group_mask(rewards, group_size)
    group_std = _std(r, dim=1)  # [num_groups]

    centered = r - r.mean(dim=1, keepdim=True)
    centered = torch.where(dead[:, None], torch.zeros_like(centered), centered)
    if scale == "group":
        adv = centered / (group_std[:, None] + eps)
    elif scale == "batch":
        adv = centered / (_std(rewards) + eps)
    else:
        adv = centered
    adv = adv.reshape(-1)

    stats = {
        "dead_group_fraction": dead.float().mean().item(),
        "adv_mean": adv.mean().item(),
        "adv_std": _std(adv).item(),
        "adv_abs_max": adv.abs().max().item(),
        "reward_std_mean": group_std.mean().item(),
    }
    return adv, stats


# -----------------------------------------------------------------------------
# KL to the reference policy (per token, samples drawn from the current policy)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3",
               clamp: float = 0.0) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of sampled tokens.

    k1 = log r            (unbiased, can be negative, high variance)
    k2 = 0.5 * (log r)^2  (biased, low variance, >= 0)
    k3 = exp(-log r) + log r - 1 = exp(ref - logp) - (ref - logp) - 1  (unbiased, >= 0)
    where log r = logp - ref_logp.  k3 is what GRPO/Med-R1 use.
    ``clamp`` > 0 bounds each token's estimate to [-clamp, clamp]: k3 grows exponentially
    when the policy has pushed a sampled token far below the reference, and one such token
    can dominate a step (verl clamps its k3 at 10). 0 = no clamp, as in the paper.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    if clamp < 0:
        raise ValueError(f"clamp must be >= 0, got {clamp}")
    log_ratio = logp - ref_logp
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    else:
        kl = torch.exp(-log_ratio) + log_ratio - 1.0
    return kl.clamp(-clamp, clamp) if clamp > 0 else kl


# -----------------------------------------------------------------------------
# loss


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, empty: float = 0.0) -> float:
    """Mean of x over mask (python float); `where`, not `*`, so NaN padding is ignored."""
    mask = mask.bool()
    n = int(mask.sum().item())
    if n == 0:
        return empty
    return (torch.where(mask, x, torch.zeros_like(x)).sum() / n).item()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    *,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    kl_clamp: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    loss_agg: str = "seq_mean_token_mean",
    seq_sum_norm_constant: float = 256.0,
    entropy: torch.Tensor | None = None,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, dict]:
    """Clipped GRPO objective with optional KL penalty; returns (scalar loss, metrics).

    per-token loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + beta * kl
    with ratio = exp(logp - old_logp).  On the first update of a batch
    old_logp == logp.detach(), ratio == 1 with gradient d(logp), and this is the
    paper's exp(logp - logp.detach()) * A.

    loss_agg:
      seq_mean_token_mean  mean over sequences of each sequence's token mean (GRPO paper);
                           a sequence with no tokens contributes 0 (and still counts in B)
      token_mean           sum over all tokens / number of tokens (DAPO)
      seq_sum_norm         sum over all tokens / (B * seq_sum_norm_constant) (Dr. GRPO)

    ratio_level:
      token     ratio_t = exp(logp_t - old_logp_t), clipped per token (GRPO, the paper)
      sequence  GSPO: one ratio per completion, s = exp(mean_t(logp_t - old_logp_t)) over its
                real tokens (the geometric mean of its token ratios), clipped per completion and
                given to every token of it; aggregation then weighs sequences as ``loss_agg`` says.
                GSPO's clip ranges are far narrower than GRPO's (the paper: 3e-4 / 4e-4).
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    B, T = logp.shape
    for name, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("entropy", entropy)):
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name} must have shape {(B, T)}, got {tuple(t.shape)}")
    if tuple(advantages.shape) != (B,):
        raise ValueError(f"advantages must have shape {(B,)}, got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    use_kl = beta > 0
    if use_kl and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (pass beta=0 to train without a reference model)")
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if loss_agg == "seq_sum_norm" and seq_sum_norm_constant <= 0:
        raise ValueError(f"seq_sum_norm_constant must be > 0, got {seq_sum_norm_constant}")

    # Work in fp32: exp() of bf16 log-prob differences is too coarse for the ratio.
    logp = logp.float()
    maskb = mask.bool()
    maskf = maskb.float()
    # Zero padded positions *before* any math: padding log-probs may be garbage
    # (-inf, NaN), and 0 * NaN in the forward or backward would poison the loss.
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    logp = torch.where(maskb, logp, zero)
    old_logp = torch.where(maskb, old_logp.detach().float(), zero)
    adv = advantages.detach().float()[:, None]  # [B, 1], broadcast over tokens

    # Clipped surrogate (PPO), per token; GSPO's one ratio per sequence is broadcast over its tokens.
    log_ratio = logp - old_logp
    if ratio_level == "sequence":
        # clamp(min=1): a sequence with no tokens gets log-ratio 0 (ratio 1), not 0/0.
        seq = log_ratio.sum(dim=1, keepdim=True) / maskf.sum(dim=1, keepdim=True).clamp(min=1.0)
        log_ratio = seq.expand(-1, T)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    pg_per_token = -torch.minimum(unclipped, clipped)

    kl_per_token = None
    if ref_logp is not None:
        ref = torch.where(maskb, ref_logp.detach().float(), zero)
        kl_per_token = kl_penalty(logp, ref, kl_estimator, kl_clamp)
    per_token = pg_per_token + beta * kl_per_token if use_kl else pg_per_token

    def aggregate(x: torch.Tensor) -> torch.Tensor:
        x = x * maskf
        if loss_agg == "seq_mean_token_mean":
            # clamp(min=1): an empty sequence gives 0/1 = 0 instead of 0/0 = NaN.
            per_seq = x.sum(dim=1) / maskf.sum(dim=1).clamp(min=1.0)
            return per_seq.mean() if B > 0 else x.sum()
        if loss_agg == "token_mean":
            return x.sum() / maskf.sum().clamp(min=1.0)
        return x.sum() / (max(B, 1) * seq_sum_norm_constant)

    loss = aggregate(per_token)

    with torch.no_grad():
        num_tokens = int(maskf.sum().item())
        # Clipping is active where min() picked the clipped term and it differs.
        is_clipped = (clipped < unclipped) & maskb
        metrics = {
            "loss": loss.item(),
            "pg_loss": aggregate(pg_per_token).item(),
            "kl": _masked_mean(kl_per_token, maskb) if kl_per_token is not None else 0.0,
            "clip_fraction": is_clipped.sum().item() / max(num_tokens, 1),
            "clip_fraction_low": (is_clipped & (ratio < 1.0)).sum().item() / max(num_tokens, 1),
            "clip_fraction_high": (is_clipped & (ratio > 1.0)).sum().item() / max(num_tokens, 1),
            # With no tokens there is no ratio; report the neutral value 1.
            "ratio_mean": _masked_mean(ratio, maskb, empty=1.0),
            "ratio_max": ratio[maskb].max().item() if num_tokens > 0 else 1.0,
            # Before the first update of a step this is the sampler-vs-learner gap (same weights, two engines).
            "logprob_gap": _masked_mean((logp.detach() - old_logp).abs(), maskb),
            "num_tokens": num_tokens,
        }
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy.detach().float(), maskb)
    return loss, metrics
