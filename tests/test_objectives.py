"""The learner's call into the GRPO loss (learner/objectives.py) passes every ``grpo.*`` option through:
for each option, a config that changes only it gives the loss that ``grpo_loss`` gives with that
value spelled out, and a different loss from the default's on the same batch (so a dropped or
swapped option is seen)."""
import pytest
import torch

from learner.grpo import grpo_loss
from learner.objectives import grpo_objective, sft_objective
from pipelines.config import load_config


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    logp = -torch.rand(B, T, generator=g) * 2
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, 1:] = 0  # sequences of different lengths, so the aggregations differ
    b = {"old_logprobs": logp - torch.randn(B, T, generator=g) * 0.6,  # ratios far from 1: clipping acts
         "advantages": torch.tensor([1.5, -1.0, 0.7, -2.0]), "completion_mask": mask}
    ref = logp + torch.randn(B, T, generator=g) * 3.0  # large log-ratios: a clamp acts
    return logp, b, ref


SPELLED = {"beta": 0.04, "kl_estimator": "k3", "kl_clamp": 0.0, "clip_low": 0.2, "clip_high": 0.2,
           "loss_agg": "seq_mean_token_mean", "seq_sum_norm_constant": 256.0, "ratio_level": "token"}
CASES = [
    ("clip_low", "0.05"), ("clip_high", "0.6"), ("beta", "0.5"), ("kl_estimator", "k1"), ("kl_clamp", "0.3"),
    ("loss_agg", "token_mean"), ("ratio_level", "sequence"),
]


def spelled(**changed):
    kw = {**SPELLED, **changed}
    logp, b, ref = batch()
    return grpo_loss(logp, b["old_logprobs"], b["advantages"], b["completion_mask"],
                     ref if kw["beta"] > 0 else None, **kw)[0]


def objective(*overrides):
    g = load_config(None, list(overrides)).grpo
    logp, b, ref = batch()
    return grpo_objective(logp, b, ref, g, None)[0]


def test_the_default_config_is_the_spelled_out_default():
    assert load_config(None, []).grpo.beta == SPELLED["beta"]
    torch.testing.assert_close(objective(), spelled(), rtol=0, atol=0)


@pytest.mark.parametrize("key, value", CASES)
def test_each_option_reaches_the_loss(key, value):
    got = objective(f"grpo.{key}={value}")
    typed = type(SPELLED[key])(value)
    torch.testing.assert_close(got, spelled(**{key: typed}), rtol=0, atol=0)
    assert not torch.isclose(got, spelled()), f"grpo.{key}={value} does not change this batch's loss"


def test_seq_sum_norm_constant_reaches_the_loss():
    got = objective("grpo.loss_agg=seq_sum_norm", "grpo.seq_sum_norm_constant=16")
    torch.testing.assert_close(got, spelled(loss_agg="seq_sum_norm", seq_sum_norm_constant=16.0), rtol=0, atol=0)
    assert not torch.isclose(got, spelled(loss_agg="seq_sum_norm"))


def test_beta_zero_sends_no_reference():
    # with beta = 0 the reference must not be needed (the learner skips its forward)
    g = load_config(None, ["grpo.beta=0"]).grpo
    logp, b, _ = batch()
    loss, _ = grpo_objective(logp, b, None, g, None)
    torch.testing.assert_close(loss, spelled(beta=0.0), rtol=0, atol=0)


def test_sft_objective_is_the_token_mean_nll_of_the_completion():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    b = {"completion_mask": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])}
    loss, m = sft_objective(logp, b, None)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    assert m["num_tokens"] == 3.0
