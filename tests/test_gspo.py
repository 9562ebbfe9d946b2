"""Hand-computed tests for GSPO's sequence-level ratio in learner/grpo.py (``ratio_level="sequence"``)."""

import math

import pytest
import torch

from learner.grpo import grpo_loss


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# Two sequences, old_logp = 0 so each token ratio is exp(logp):
#   seq 1: token ratios [2, 1] (+ a pad)  -> s1 = exp((ln 2 + 0) / 2) = sqrt(2)
#   seq 2: token ratios [2, 0.5, 1]       -> s2 = exp((ln 2 + ln 0.5 + 0) / 3) = 1
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def _logp():
    return torch.log(torch.tensor([[2.0, 1.0, 1.0], [2.0, 0.5, 1.0]])).requires_grad_()


def test_sequence_ratio_clips_whole_sequences():
    # A = [1, 1], clip 0.2: s1 = 1.414 > 1.2 is clipped for the whole sequence (loss -1.2, no gradient);
    # s2 = 1 is not, although its first token's own ratio (2) would be clipped at token level.
    logp = _logp()
    loss, m = grpo_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, 1.0]), MASK, beta=0.0,
                        ratio_level="sequence", loss_agg="seq_mean_token_mean")
    assert math.isclose(loss.item(), (-1.2 + -1.0) / 2, rel_tol=1e-6)
    loss.backward()
    # seq 2: d(-s2 * A)/d logp_t = -s2 / n2 = -1/3, then / B = 2 sequences
    assert close(logp.grad, [[0.0, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6]])
    assert math.isclose(m["clip_fraction"], 2 / 5) and m["clip_fraction_high"] == m["clip_fraction"]
    assert math.isclose(m["ratio_max"], math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(m["ratio_mean"], (2 * math.sqrt(2) + 3 * 1.0) / 5, rel_tol=1e-6)  # over tokens


def test_token_level_differs_on_the_same_input():
    # Token level, same input: seq 1 min(r, clip r) = [1.2, 1] -> -1.1; seq 2 = [1.2, 0.5, 1] -> -0.9.
    logp = _logp()
    loss, m = grpo_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, 1.0]), MASK, beta=0.0,
                        ratio_level="token", loss_agg="seq_mean_token_mean")
    assert math.isclose(loss.item(), (-1.1 + -0.9) / 2, rel_tol=1e-6)
    assert math.isclose(m["clip_fraction"], 2 / 5)  # the two tokens with ratio 2


def test_sequence_ratio_unclipped_gradient_token_mean():
    # A = [1, -2], clip range [0.8, 2.0]: nothing clipped. token_mean over 5 tokens:
    #   loss = (2 * (-1 * sqrt2) + 3 * (2 * 1)) / 5
    #   d/d logp_{1,t} = (1/5) * 2 tokens * (-A1) * s1 * (1/n1) = -sqrt2 / 5
    #   d/d logp_{2,t} = (1/5) * 3 tokens * (-A2) * s2 * (1/n2) = 2/5
    logp = _logp()
    loss, m = grpo_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), MASK, beta=0.0,
                        clip_low=0.2, clip_high=1.0, ratio_level="sequence", loss_agg="token_mean")
    assert math.isclose(loss.item(), (-2 * math.sqrt(2) + 6) / 5, rel_tol=1e-6)
    loss.backward()
    r2 = math.sqrt(2)
    assert close(logp.grad, [[-r2 / 5, -r2 / 5, 0.0], [2 / 5, 2 / 5, 2 / 5]])
    assert m["clip_fraction"] == 0.0


def test_sequence_ratio_low_side_clip_and_empty_sequence():
    # seq 1: token ratios [0.25, 1] -> s = exp(ln 0.25 / 2) = 0.5 < 0.8 with A = -1: clipped at 0.8, no gradient.
    # seq 2: no tokens (garbage log-probs): ratio 1, contributes 0 and no NaN.
    logp = torch.tensor([[math.log(0.25), 0.0], [float("nan"), float("-inf")]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0], [float("nan"), 0.0]])
    loss, m = grpo_loss(logp, old, torch.tensor([-1.0, 3.0]), torch.tensor([[1, 1], [0, 0]]), beta=0.0,
                        ratio_level="sequence", loss_agg="seq_mean_token_mean")
    assert math.isclose(loss.item(), 0.8 / 2, rel_tol=1e-6)  # -min(-0.5, -0.8) = 0.8, averaged over B = 2
    loss.backward()
    assert (logp.grad == 0).all()
    assert m["clip_fraction"] == 1.0 and m["clip_fraction_low"] == 1.0
    assert math.isclose(m["ratio_mean"], 0.5, rel_tol=1e-6)


def test_on_policy_sequence_gradient_equals_token_gradient_per_sequence_mean():
    # At old == logp (first update), s = 1 and d s / d logp_t = 1/n: GSPO's gradient is
    # -A/n per token of a sequence, the same as token-level GRPO under seq_mean_token_mean.
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    adv = torch.randn(3)
    base = -torch.rand(3, 4) * 2
    grads = {}
    for level in ("token", "sequence"):
        logp = base.clone().requires_grad_()
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask, beta=0.0, ratio_level=level)
        loss.backward()
        grads[level] = logp.grad
    assert close(grads["token"], grads["sequence"])
    n = mask.sum(dim=1, keepdim=True).float()
    assert close(grads["sequence"], -adv[:, None] / n / 3 * mask)


def test_sequence_ratio_keeps_the_kl_per_token():
    # A = 0 isolates the KL term, which stays per token whatever the ratio level.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0]])
    a, _ = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref, beta=0.5, ratio_level="sequence")
    b, _ = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref, beta=0.5, ratio_level="token")
    assert math.isclose(a.item(), 0.5 * (math.exp(-1) + math.e - 2) / 2, rel_tol=1e-6)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-7)


def test_unknown_ratio_level_is_refused():
    logp = _logp()
    with pytest.raises(ValueError, match="ratio_level"):
        grpo_loss(logp, logp.detach(), torch.ones(2), MASK, beta=0.0, ratio_level="seq")
