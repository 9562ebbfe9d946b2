"""The per-micro-batch objectives the learner backpropagates: the GRPO loss from the config, and SFT's NLL."""
from __future__ import annotations

from learner.grpo import grpo_loss


def grpo_objective(logp, b, ref_logp, g, entropy):
    """``learner/grpo.py``'s loss with the ``grpo`` config section's options."""
    beta = float(g.beta)
    return grpo_loss(logp, b["old_logprobs"], b["advantages"], b["completion_mask"],
                     ref_logp if beta > 0 else None,
                     beta=beta, kl_estimator=str(g.kl_estimator), kl_clamp=float(g.kl_clamp),
                     clip_low=float(g.clip_low),
                     clip_high=float(g.clip_high), loss_agg=str(g.loss_agg),
                     seq_sum_norm_constant=float(g.seq_sum_norm_constant), entropy=entropy,
                     ratio_level=str(g.ratio_level))


def sft_objective(logp, b, entropy):
    """Token-mean NLL over the completion tokens of this micro-batch."""
    mask = b["completion_mask"].to(logp.dtype)
    n = mask.sum().clamp(min=1.0)
    loss = -(logp * mask).sum() / n
    m = {"loss": float(loss.detach()), "nll": float(loss.detach()), "num_tokens": float(mask.sum())}
    if entropy is not None:
        m["entropy"] = float((entropy.detach() * mask).sum() / n)
    return loss, m
