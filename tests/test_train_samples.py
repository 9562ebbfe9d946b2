"""The trainer's step from scored groups to learner samples (pipelines/training/train_samples.py):
each completion gets its own advantage, dead groups drop only when filtered, truncated completions
leave the loss only under the overlong filter. Expected values are written out by hand."""
from types import SimpleNamespace

import pytest
import torch

from learner.samples import IMAGE_PLACEHOLDER
from pipelines.training.grpo_loop import SampledPrompt
from pipelines.training.overlong import TRUNCATED
from pipelines.training.train_samples import groups_that_train, learner_batch


def group(rid: str, n: int, truncated: tuple[int, ...] = ()) -> SampledPrompt:
    comps = [{"token_ids": [10 + i, 2], "logprobs": [-0.1 * (i + 1), -0.5], "text": f"c{i}",
              "finish_reason": TRUNCATED if i in truncated else "stop"} for i in range(n)]
    return SampledPrompt(record=SimpleNamespace(id=rid), payload={"prompt": f"user {IMAGE_PLACEHOLDER} q",
                                                                   "image": b"png-" + rid.encode()},
                         result={"completions": comps}, version=0, worker=0)


def test_each_completion_carries_its_own_advantage_in_group_order():
    groups = [group("a", 3), group("b", 3)]
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -2.0, 0.0])
    lb = learner_batch(groups, adv, [True, True], overlong_filter=False)
    assert [(s.sample_id, s.advantage) for s in lb.samples] == [
        ("a#0", 1.0), ("a#1", -1.0), ("a#2", 0.5), ("b#0", 2.0), ("b#1", -2.0), ("b#2", 0.0)]
    assert lb.samples[4].old_logprobs == pytest.approx([-0.2, -0.5])  # the sampler's, passed through
    assert lb.samples[4].completion_ids == [11, 2] and lb.samples[4].image == b"png-b"
    assert (lb.truncated, lb.overlong_dropped) == (0, 0)


def test_groups_that_do_not_train_give_no_samples_but_keep_their_place():
    groups = [group("a", 2), group("b", 2), group("c", 2)]
    adv = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.3, -0.3])
    lb = learner_batch(groups, adv, [False, True, True], overlong_filter=False)
    assert [(s.sample_id, s.advantage) for s in lb.samples] == [
        ("b#0", pytest.approx(0.7)), ("b#1", pytest.approx(-0.7)), ("c#0", pytest.approx(0.3)),
        ("c#1", pytest.approx(-0.3))]


def test_overlong_filter_drops_truncated_completions_of_training_groups_only():
    groups = [group("a", 3, truncated=(1,)), group("b", 2, truncated=(0, 1))]
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    kept = learner_batch(groups, adv, [True, False], overlong_filter=False)
    assert [s.sample_id for s in kept.samples] == ["a#0", "a#1", "a#2"]
    assert (kept.truncated, kept.overlong_dropped) == (3, 0)
    lb = learner_batch(groups, adv, [True, False], overlong_filter=True)
    assert [(s.sample_id, s.advantage) for s in lb.samples] == [("a#0", 1.0), ("a#2", 3.0)]
    assert (lb.truncated, lb.overlong_dropped) == (3, 1)  # b's two were not going to train anyway


def test_advantages_must_cover_the_completions():
    with pytest.raises(ValueError, match="3 completions in the groups but 4 advantages"):
        learner_batch([group("a", 3)], torch.zeros(4), [True], overlong_filter=False)


def test_dead_group_filter_applies_only_when_asked():
    # G = 5 and rewards of 0.1: a group whose mean would round is still dead
    r = torch.tensor([0.1] * 5 + [0.0, 1.0, 0.0, 0.0, 0.0] + [1.0] * 5)
    assert groups_that_train(r, 5, filter_dead=True) == [False, True, False]
    assert groups_that_train(r, 5, filter_dead=False) == [True, True, True]


@pytest.mark.parametrize("overrides, scale, eps", [
    ([], "group", 1e-4), (["grpo.advantage_scale=batch"], "batch", 1e-4),
    (["grpo.advantage_scale=none"], "none", 1e-4), (["grpo.advantage_eps=0.5"], "group", 0.5),
])
def test_group_advantages_follow_the_config(overrides, scale, eps):
    from learner.grpo import compute_advantages
    from pipelines.config import load_config
    from pipelines.training.train_samples import group_advantages

    r = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    got, _ = group_advantages(r, 4, load_config(None, overrides).grpo)
    torch.testing.assert_close(got, compute_advantages(r, 4, scale=scale, eps=eps)[0], rtol=0, atol=0)
    if overrides:  # each setting changes these advantages
        assert not torch.allclose(got, compute_advantages(r, 4)[0])
