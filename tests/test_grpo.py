"""Hand-computed tests for learner/grpo.py (advantages, KL estimators, clipped loss)."""

import math

import pytest
import torch

from learner.grpo import compute_advantages, dead_group_mask, grpo_loss, kl_penalty

EPS = 1e-4


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# -----------------------------------------------------------------------------
# advantages

# Two groups of 4: one with signal, one dead.  By hand:
#   group 1 = [1, 0, 0, 0]: mean 0.25, unbiased var = (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5
#   group 2 = [1, 1, 1, 1]: dead
#   batch: mean 0.625, sum sq dev = 5 * 0.375^2 + 3 * 0.625^2 = 1.875, unbiased var = 1.875 / 7
R = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_advantages_group():
    adv, stats = compute_advantages(R, 4, "group")
    d = 0.5 + EPS
    assert close(adv, [0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d, 0, 0, 0, 0])
    assert stats["dead_group_fraction"] == 0.5
    assert math.isclose(stats["reward_std_mean"], 0.25, abs_tol=1e-7)
    assert math.isclose(stats["adv_abs_max"], 0.75 / d, rel_tol=1e-6)
    assert math.isclose(stats["adv_mean"], 0.0, abs_tol=1e-7)
    # unbiased std of [0.75, -.25, -.25, -.25, 0, 0, 0, 0] / d: mean 0, sum sq = 0.5625 + 0.1875, /7
    assert math.isclose(stats["adv_std"], math.sqrt(0.75 / 7) / d, rel_tol=1e-5)


def test_advantages_batch():
    adv, _ = compute_advantages(R, 4, "batch")
    d = math.sqrt(1.875 / 7) + EPS
    assert close(adv, [0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d, 0, 0, 0, 0])


def test_advantages_none_is_dr_grpo():
    adv, _ = compute_advantages(R, 4, "none")
    assert close(adv, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_advantages_group_size_two_and_eps():
    # [2, 0]: mean 1, unbiased std sqrt(2); custom eps.
    adv, _ = compute_advantages(torch.tensor([2.0, 0.0]), 2, eps=0.5)
    d = math.sqrt(2) + 0.5
    assert close(adv, [1 / d, -1 / d])


def test_dead_groups_are_exactly_zero():
    # 0.1 is not exactly representable: in float32 the mean of seven 0.1s is not 0.1 (checked below, so
    # the rounding this guards against really happens); the advantage must still be exactly 0.
    G = 7
    dead = torch.full((G,), 0.1, dtype=torch.float32)
    assert (dead - dead.mean() != 0).all()
    r = torch.cat([dead, torch.full((G,), 0.7), torch.tensor([0.3, 0.6, 0.3, 0.3, 0.6, 0.3, 0.3])])
    for scale in ("group", "batch", "none"):
        adv, stats = compute_advantages(r, G, scale)
        assert (adv[:2 * G] == 0).all()
        assert (adv[2 * G:] != 0).all()
        assert math.isclose(stats["dead_group_fraction"], 2 / 3, rel_tol=1e-6)
    assert dead_group_mask(r, G).tolist() == [True, True, False]


def test_advantages_single_sample_groups_and_int_rewards():
    adv, stats = compute_advantages(torch.tensor([1, 0, 1]), 1)
    assert adv.tolist() == [0.0, 0.0, 0.0] and adv.dtype.is_floating_point
    assert stats["dead_group_fraction"] == 1.0
    assert all(math.isfinite(v) for v in stats.values())


def test_advantages_errors():
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(4), 2, scale="groups")
    with pytest.raises(ValueError):
        compute_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(2, 2), 2)


def test_advantages_not_differentiable_through_rewards():
    r = torch.tensor([1.0, 0.0], requires_grad=True)
    adv, _ = compute_advantages(r, 2)
    assert not adv.requires_grad


# -----------------------------------------------------------------------------
# KL estimators, by hand

def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-2.0, -1.0, -0.5])
    # d = logp - ref = [1, -1, 0]
    assert close(kl_penalty(logp, ref, "k1"), [1.0, -1.0, 0.0])
    assert close(kl_penalty(logp, ref, "k2"), [0.5, 0.5, 0.0])
    # k3 = exp(ref - logp) - (ref - logp) - 1: [e^-1 + 1 - 1, e^1 - 1 - 1, 0]
    assert close(kl_penalty(logp, ref, "k3"), [math.exp(-1), math.e - 2, 0.0])
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_kl_clamp_bounds_each_token():
    logp = torch.tensor([-12.0, -1.0, -0.5], requires_grad=True)
    ref = torch.tensor([-0.5, -2.0, -0.5])
    raw = kl_penalty(logp, ref, "k3")
    assert float(raw[0]) > 9000  # exp(11.5): the spike a clamp exists for
    clamped = kl_penalty(logp, ref, "k3", clamp=10.0)
    assert close(clamped, [10.0, math.exp(-1), 0.0])
    clamped.sum().backward()
    assert float(logp.grad[0]) == 0.0 and float(logp.grad[1]) != 0.0  # a clamped token is not pulled back
    assert close(kl_penalty(logp.detach(), ref, "k1", clamp=1.0), [-1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="clamp"):
        kl_penalty(logp, ref, "k3", clamp=-1.0)


def test_k3_gradient():
    # d k3 / d logp = 1 - exp(ref - logp)
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -1.0])
    kl_penalty(logp, ref, "k3").sum().backward()
    assert close(logp.grad, [1 - math.exp(-1), 1 - math.e])


# -----------------------------------------------------------------------------
# loss aggregation on 2 sequences x 3 tokens, ratio == 1, beta == 0
#   A = [1, -3], mask = [[1, 1, 0], [1, 0, 0]]; per-token loss = -A:
#   seq_mean_token_mean: mean(-1, 3) = 1;  d/dlogp = -A_i / (B * n_i)
#   token_mean: (-1 - 1 + 3) / 3 = 1/3;    d/dlogp = -A_i / N
#   seq_sum_norm (C=4): 1 / (2 * 4);       d/dlogp = -A_i / (B * C)

MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
ADV = torch.tensor([1.0, -3.0])


def _logp():
    return torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -0.9]], requires_grad=True)


@pytest.mark.parametrize(
    "agg, loss_expected, grad_expected",
    [
        ("seq_mean_token_mean", 1.0, [[-0.25, -0.25, 0.0], [1.5, 0.0, 0.0]]),
        ("token_mean", 1 / 3, [[-1 / 3, -1 / 3, 0.0], [1.0, 0.0, 0.0]]),
        ("seq_sum_norm", 1 / 8, [[-1 / 8, -1 / 8, 0.0], [3 / 8, 0.0, 0.0]]),
    ],
)
def test_loss_aggregations(agg, loss_expected, grad_expected):
    logp = _logp()
    loss, m = grpo_loss(logp, logp.detach(), ADV, MASK, beta=0.0, loss_agg=agg, seq_sum_norm_constant=4.0)
    assert math.isclose(loss.item(), loss_expected, rel_tol=1e-6)
    assert math.isclose(m["pg_loss"], loss_expected, rel_tol=1e-6)
    loss.backward()
    assert close(logp.grad, grad_expected)
    assert m["num_tokens"] == 3 and m["kl"] == 0.0 and m["clip_fraction"] == 0.0
    assert m["ratio_mean"] == 1.0 and m["ratio_max"] == 1.0


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_sum_norm"])
def test_first_update_equals_paper_objective(agg):
    # With old_logp == logp.detach(), the gradient is that of -A * logp aggregated the same way.
    torch.manual_seed(0)
    B, T, C = 4, 5, 7.0
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    adv = torch.randn(B)
    logp = (-torch.rand(B, T) * 3).requires_grad_()
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, beta=0.0, loss_agg=agg, seq_sum_norm_constant=C)
    loss.backward()
    g = logp.grad.clone()

    logp2 = logp.detach().clone().requires_grad_()
    surrogate = -adv[:, None] * logp2 * mask  # written independently of grpo_loss
    if agg == "seq_mean_token_mean":
        ref = sum(surrogate[i].sum() / mask[i].sum() for i in range(B)) / B
    elif agg == "token_mean":
        ref = surrogate.sum() / mask.sum()
    else:
        ref = surrogate.sum() / (B * C)
    ref.backward()
    assert close(g, logp2.grad)
    # Value: ratio == 1, so the per-token loss is -A_i (the paper's exp(logp - logp.detach()) * A).
    n = mask.sum(dim=1)
    value = {"seq_mean_token_mean": (-adv).mean(), "token_mean": (-adv * n).sum() / n.sum(),
             "seq_sum_norm": (-adv * n).sum() / (B * C)}[agg]
    assert math.isclose(loss.item(), value.item(), rel_tol=1e-5, abs_tol=1e-6)


# -----------------------------------------------------------------------------
# clipping, one sequence of 4 tokens, old_logp = 0 so ratio = exp(logp)
#   ratios [1.5, 0.5, 1.1, 0.9], eps 0.2 -> clip range [0.8, 1.2]; token_mean over 4 tokens.

RATIOS = [1.5, 0.5, 1.1, 0.9]


def _clip_case(adv, clip_low=0.2, clip_high=0.2):
    logp = torch.log(torch.tensor([RATIOS])).requires_grad_()
    loss, m = grpo_loss(logp, torch.zeros(1, 4), torch.tensor([adv]), torch.ones(1, 4), beta=0.0,
                        clip_low=clip_low, clip_high=clip_high, loss_agg="token_mean")
    loss.backward()
    return loss.item(), logp.grad[0].tolist(), m


def test_clip_high_positive_advantage():
    # A = +1: min(r, clip(r)) = [1.2, 0.5, 1.1, 0.9]; token 0 is clipped (high side), no gradient.
    loss, grad, m = _clip_case(1.0)
    assert math.isclose(loss, -(1.2 + 0.5 + 1.1 + 0.9) / 4, rel_tol=1e-6)
    # d(-r)/dlogp = -r, divided by 4 tokens
    assert close(grad, [0.0, -0.5 / 4, -1.1 / 4, -0.9 / 4])
    assert m["clip_fraction"] == 0.25 and m["clip_fraction_high"] == 0.25 and m["clip_fraction_low"] == 0.0
    assert math.isclose(m["ratio_max"], 1.5, rel_tol=1e-6)
    assert math.isclose(m["ratio_mean"], sum(RATIOS) / 4, rel_tol=1e-6)
    # |log r| per token, averaged: the sampler-vs-learner gap when nothing has been updated yet
    assert math.isclose(m["logprob_gap"], sum(abs(math.log(r)) for r in RATIOS) / 4, rel_tol=1e-6)


def test_clip_low_negative_advantage():
    # A = -1: min(-r, -clip(r)) = [-1.5, -0.8, -1.1, -0.9]; token 1 is clipped (low side).
    loss, grad, m = _clip_case(-1.0)
    assert math.isclose(loss, (1.5 + 0.8 + 1.1 + 0.9) / 4, rel_tol=1e-6)
    assert close(grad, [1.5 / 4, 0.0, 1.1 / 4, 0.9 / 4])
    assert m["clip_fraction"] == 0.25 and m["clip_fraction_low"] == 0.25 and m["clip_fraction_high"] == 0.0


def test_clip_no_effect_on_the_other_side():
    # A > 0 with r < 1 - eps (token 1) and A < 0 with r > 1 + eps (token 0) are NOT clipped:
    # the unclipped term is the pessimistic one, and it keeps its gradient (checked above too).
    _, grad_pos, _ = _clip_case(1.0)
    _, grad_neg, _ = _clip_case(-1.0)
    assert grad_pos[1] != 0.0 and grad_neg[0] != 0.0


def test_asymmetric_clip_higher():
    # DAPO clip-higher: clip_high 0.6 -> ratio 1.5 no longer clipped for A > 0.
    loss, grad, m = _clip_case(1.0, clip_low=0.2, clip_high=0.6)
    assert math.isclose(loss, -(1.5 + 0.5 + 1.1 + 0.9) / 4, rel_tol=1e-6)
    assert close(grad, [-1.5 / 4, -0.5 / 4, -1.1 / 4, -0.9 / 4])
    assert m["clip_fraction"] == 0.0


def test_zero_advantage_not_counted_as_clipped():
    _, grad, m = _clip_case(0.0)
    assert m["clip_fraction"] == 0.0 and grad == [0.0] * 4


# -----------------------------------------------------------------------------
# KL in the loss

def test_kl_term_in_loss_value_and_gradient():
    # A = 0 isolates the KL term.  logp = [-1, -2], ref = [-2, -1], token_mean, beta 0.5.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0]])
    loss, m = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref, beta=0.5,
                        kl_estimator="k3", loss_agg="token_mean")
    k3 = [math.exp(-1), math.e - 2]
    assert math.isclose(loss.item(), 0.5 * sum(k3) / 2, rel_tol=1e-6)
    assert math.isclose(m["kl"], sum(k3) / 2, rel_tol=1e-6)
    loss.backward()
    assert close(logp.grad, [[0.5 * (1 - math.exp(-1)) / 2, 0.5 * (1 - math.e) / 2]])

    logp.grad = None
    loss, m = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref, beta=0.5,
                        kl_estimator="k1", loss_agg="token_mean")
    assert math.isclose(loss.item(), 0.5 * (1 + -1) / 2, abs_tol=1e-7)
    loss.backward()
    assert close(logp.grad, [[0.25, 0.25]])  # d(beta * k1)/dlogp = beta, / 2 tokens

    logp.grad = None
    loss, _ = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref, beta=0.5,
                        kl_estimator="k2", loss_agg="token_mean")
    assert math.isclose(loss.item(), 0.5 * (0.5 + 0.5) / 2, rel_tol=1e-6)
    loss.backward()
    assert close(logp.grad, [[0.5 * 1 / 2, 0.5 * -1 / 2]])  # d k2 = logp - ref


def test_beta_zero_needs_no_reference():
    logp = _logp()
    loss, m = grpo_loss(logp, logp.detach(), ADV, MASK, None, beta=0.0)
    assert math.isfinite(loss.item()) and m["kl"] == 0.0


def test_beta_positive_without_reference_raises():
    logp = _logp()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp.detach(), ADV, MASK, None, beta=0.04)


def test_beta_zero_with_reference_reports_kl_but_ignores_it():
    logp = _logp()
    ref = logp.detach() - 1.0  # k1 = 1 everywhere
    loss0, m = grpo_loss(logp, logp.detach(), ADV, MASK, ref, beta=0.0, kl_estimator="k1")
    assert math.isclose(loss0.item(), 1.0, rel_tol=1e-6)  # same as the seq_mean case above
    assert math.isclose(m["kl"], 1.0, rel_tol=1e-6)


# -----------------------------------------------------------------------------
# padding and empty sequences

@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_sum_norm"])
def test_zero_token_sequence_and_garbage_padding(agg):
    # Sequence 2 has no tokens; its log-probs are garbage (-inf / nan) and must not leak.
    logp = torch.tensor([[-1.0, -2.0], [float("-inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0], [float("nan"), 0.0]])
    ref = torch.tensor([[-1.0, -2.0], [float("nan"), float("inf")]])
    ent = torch.tensor([[0.5, 1.5], [float("nan"), 3.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    loss, m = grpo_loss(logp, old, torch.tensor([2.0, 5.0]), mask, ref, beta=0.1, loss_agg=agg,
                        seq_sum_norm_constant=2.0, entropy=ent)
    # Only sequence 1 counts: per-token loss -2 (ratio 1, kl 0).
    expected = {"seq_mean_token_mean": -2.0 / 2, "token_mean": -2.0, "seq_sum_norm": -4.0 / (2 * 2.0)}[agg]
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert (logp.grad[1] == 0).all()
    assert m["num_tokens"] == 2 and m["kl"] == 0.0 and math.isclose(m["entropy"], 1.0)
    assert all(math.isfinite(v) for v in m.values())


def test_all_masked_batch_is_finite():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, m = grpo_loss(logp, logp.detach(), torch.ones(2), torch.zeros(2, 3), logp.detach(), beta=0.04)
    assert loss.item() == 0.0
    loss.backward()
    assert (logp.grad == 0).all()
    assert m["num_tokens"] == 0 and m["kl"] == 0.0 and m["clip_fraction"] == 0.0 and m["ratio_mean"] == 1.0


def test_metrics_are_python_floats_and_bf16_inputs_work():
    logp = _logp().detach().to(torch.bfloat16).requires_grad_()
    loss, m = grpo_loss(logp, logp.detach(), ADV, MASK, logp.detach(), beta=0.04,
                        entropy=torch.ones(2, 3))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logp.grad.dtype == torch.bfloat16
    for k in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_mean", "ratio_max", "entropy"):
        assert isinstance(m[k], float), k
    assert isinstance(m["num_tokens"], int)


def test_loss_argument_errors():
    logp = _logp()
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), ADV, MASK, beta=0.0, loss_agg="mean")
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), ADV[:1], MASK, beta=0.0)
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), ADV, MASK[:, :2], beta=0.0)
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), ADV, MASK, beta=0.0, clip_low=1.0)
