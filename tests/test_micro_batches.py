"""Micro-batches by sample count or by padded tokens (groups kept whole), their loss weights, and
the learner's step being the same whatever the layout and the packing."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from learner.micro_batches import (
    count_minis,
    mini_batch_ranges,
    pack_by_tokens,
    padded_tokens,
    token_minis,
    weighted_micro_batches,
)
from tests.test_learner import dist_env, make_learner, model_dir, one_thread, weights  # noqa: F401
from tests.test_shared_prefix import groups

# (prompt key, prompt tokens, completion tokens): groups a (2), b (3), c (1)
ITEMS = [("a", 10, 3), ("a", 10, 5), ("b", 12, 2), ("b", 12, 4), ("b", 12, 1), ("c", 8, 6)]


def test_padded_tokens_by_hand():
    # shared: one row per prompt less its last token (longest 10 - 1) + rows of 1 + longest completion (5)
    assert padded_tokens(ITEMS[:2], shared_prefix=True) == 1 * 9 + 2 * 6
    assert padded_tokens(ITEMS[:5], shared_prefix=True) == 2 * 11 + 5 * 6
    # per-sample: B rows of the longest prompt + completion (12 + 4)
    assert padded_tokens(ITEMS[:5], shared_prefix=False) == 5 * 16
    assert padded_tokens([], shared_prefix=True) == 0


def test_pack_keeps_groups_whole_when_they_fit():
    # a (21) then a+b (52 > 40): b starts a new one (26); b+c (50 > 40): c alone
    assert pack_by_tokens(ITEMS, 40, shared_prefix=True) == [(0, 2), (2, 5), (5, 6)]
    # a+b (52) fit in 60, a+b+c (75) does not
    assert pack_by_tokens(ITEMS, 60, shared_prefix=True) == [(0, 5), (5, 6)]
    # per-sample rows: a (30); b alone is 48 > 40, so it is split; its last one goes with c (28)
    assert pack_by_tokens(ITEMS, 40, shared_prefix=False) == [(0, 2), (2, 4), (4, 6)]
    # nothing fits two by two: one item each, none dropped
    assert pack_by_tokens(ITEMS, 20, shared_prefix=True) == [(i, i + 1) for i in range(6)]
    assert pack_by_tokens(ITEMS, 10**6, shared_prefix=True) == [(0, 6)]
    with pytest.raises(ValueError):
        pack_by_tokens(ITEMS, 0, shared_prefix=True)


IDENT = lambda t: t  # noqa: E731  reductions over one rank


def test_mini_batches_then_micro_batches():
    # fixed count: micro-batches of 2, then 2 mini-batches over the 3 micro-batches (bounds 0, 2, 3)
    assert count_minis(5, 2, 2, IDENT) == [[(0, 2), (2, 4)], [(4, 5)]]
    assert count_minis(0, 2, 2, IDENT) is None
    # cuts move to the nearest group boundary: 4 groups of 4 cut at 4, 8, 12; 3 + 5 + 2 cut at 5 -> 3
    assert mini_batch_ranges(list("aaaabbbbccccdddd"), [4, 8, 12]) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert mini_batch_ranges(list("aaabbbbbcc"), [5]) == [(0, 3), (3, 10)]
    assert mini_batch_ranges(list("aaaaaa"), [3]) == [(0, 3), (3, 6)]  # one group: no boundary to move to
    assert mini_batch_ranges(list("ab"), [16, 32]) == [(0, 2), (2, 2), (2, 2)]  # a rank short of samples
    # by tokens: the fixed count's mini-batches (micro-batches of 2 -> 3 of them, 2 mini-batches: cut at
    # sample 4, moved to the group boundary 5), each packed within 40 tokens
    assert token_minis(ITEMS, 40, True, 2, 2, IDENT) == [[(0, 2), (2, 5)], [(5, 6)]]
    # a budget that holds everything still gives the optimizer steps a fixed count would
    assert token_minis(ITEMS, 10**6, True, 2, 2, IDENT) == [[(0, 5)], [(5, 6)]]
    assert token_minis(ITEMS, 10**6, True, 4, 6, IDENT) == [[(0, 6)]]  # one micro-batch of 6: one step


def _s(n_tokens):
    return SimpleNamespace(completion_ids=[0] * n_tokens)


def test_loss_weights_are_shares_of_each_mini_batch():
    minis = [[[_s(3), _s(5)], [_s(2), _s(4), _s(1)]], [[_s(6)]]]  # mini 0: 5 sequences, 15 tokens; mini 1: 1, 6
    micro, bounds = weighted_micro_batches(minis, "seq_mean", 1, IDENT, IDENT, ["filler"])
    assert bounds == [0, 2, 3]
    assert [w for _, w in micro] == pytest.approx([2 / 5, 3 / 5, 1.0])
    micro, _ = weighted_micro_batches(minis, "token_mean", 1, IDENT, IDENT, ["filler"])
    assert [w for _, w in micro] == pytest.approx([8 / 15, 7 / 15, 1.0])
    # token_mean counts the tokens the loss trains on (sampled vision tokens are masked out): here one fewer each
    micro, _ = weighted_micro_batches(minis, "token_mean", 1, IDENT, IDENT, ["filler"],
                                      lambda s: len(s.completion_ids) - 1)
    assert [w for _, w in micro] == pytest.approx([6 / 10, 4 / 10, 1.0])
    # Two ranks, the other with the same counts but 2 micro-batches in each mini-batch: counts double,
    # weights are share x world (the same here), and this rank's mini-batch 1 ends with a filler of weight 0.
    micro, bounds = weighted_micro_batches(minis, "seq_mean", 2, lambda t: torch.maximum(t, torch.tensor([2, 2])),
                                           lambda t: 2 * t, ["filler"])
    assert bounds == [0, 2, 4]
    assert [w for _, w in micro] == pytest.approx([2 / 5, 3 / 5, 1.0, 0.0])
    assert micro[3][0] == ["filler"]
    assert weighted_micro_batches([[], []], "seq_mean", 1, IDENT, IDENT, []) is None


def _capture_grads(learner) -> list:
    """The gradients the optimizer steps with (rank-averaged, accumulated, clipped), captured before its step:
    weights after one Adam step would magnify float noise in gradients near Adam's eps."""
    inner = getattr(learner.optimizer, "optimizer", learner.optimizer)  # ZeRO-1/2 wrap the torch optimizer
    seen: list = []
    inner.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]))
    return seen


def test_step_equals_across_layouts_and_packing(model_dir, dist_env):  # noqa: F811
    """One GRPO step of two mini-batches (beta > 0: the reference forward too; token-mean over
    micro-batches of different sizes) from the same weights: per-sample rows, the shared prefix, and
    the shared prefix packed by tokens (fewer, larger micro-batches) give the optimizer the same
    gradients at both of its steps."""
    # lr small enough that the second step's gradient does not feel Adam's noise on the first
    base = dict(lr=1e-5, micro_batch_size=3, mini_batches=2, beta=0.04, loss_agg="token_mean")
    learners = {"per-sample": make_learner(model_dir, shared_prefix=False, **base),
                "shared": make_learner(model_dir, shared_prefix=True, **base),
                "packed": make_learner(model_dir, shared_prefix=True, max_tokens_per_micro_batch=700, **base)}
    samples = groups(learners["shared"].processor, sizes=(3, 3, 4, 2))  # mini-batches: samples 0-5, 6-11
    fixed = [len(c) for m in learners["shared"]._minis(samples) for c in m]
    packed = [len(c) for m in learners["packed"]._minis(samples) for c in m]
    assert fixed == [3, 3, 3, 3] and len(packed) < len(fixed), packed
    assert [sum(len(c) for c in m) for m in learners["packed"]._minis(samples)] == [6, 6]
    grads = {k: _capture_grads(ln) for k, ln in learners.items()}
    w0 = weights(learners["shared"])
    out = {k: ln.train_step(samples) for k, ln in learners.items()}
    ref = out["per-sample"]
    g_ref = [g for step in grads["per-sample"] for g in step]
    assert len(grads["per-sample"]) == 2, "two mini-batches: two optimizer steps"
    scale = max(float(g.abs().max()) for g in g_ref)
    for k in ("shared", "packed"):
        assert out[k]["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-6), k
        assert out[k]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), k
        assert out[k]["vision_tokens_masked"] == ref["vision_tokens_masked"] == 1.0
        g_k = [g for step in grads[k] for g in step]
        assert len(g_k) == len(g_ref)
        for a, b in zip(g_k, g_ref):
            torch.testing.assert_close(a / scale, b / scale, atol=1e-4, rtol=0, msg=k)
    assert any(not torch.equal(weights(learners["shared"])[n], w0[n]) for n in w0), "the step changed the weights"


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_mean", "seq_sum_norm"])
def test_micro_batch_weights_follow_the_configured_aggregation(model_dir, dist_env, loss_agg):  # noqa: F811
    """A mini-batch cut into micro-batches of 3 and run as one micro-batch of 6 gives the optimizer the
    same gradients, for the per-sequence aggregations too: each micro-batch's loss is weighted by its
    share of the mini-batch's sequences (not its tokens, which only token_mean uses)."""
    base = dict(lr=1e-5, mini_batches=2, beta=0.0, loss_agg=loss_agg)
    cut, whole = make_learner(model_dir, micro_batch_size=3, **base), make_learner(model_dir, micro_batch_size=6, **base)
    samples = groups(cut.processor, sizes=(3, 3, 4, 2))  # completions of unequal length
    assert [len(c) for m in cut._minis(samples) for c in m] == [3, 3, 3, 3]
    assert [len(c) for m in whole._minis(samples) for c in m] == [6, 6]
    grads = {k: _capture_grads(ln) for k, ln in (("cut", cut), ("whole", whole))}
    cut.train_step(samples)
    whole.train_step(samples)
    g_cut = [g for step in grads["cut"] for g in step]
    g_whole = [g for step in grads["whole"] for g in step]
    scale = max(float(g.abs().max()) for g in g_whole)
    for a, b in zip(g_cut, g_whole, strict=True):
        torch.testing.assert_close(a / scale, b / scale, atol=1e-4, rtol=0)
