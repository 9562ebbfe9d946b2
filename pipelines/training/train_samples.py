"""From scored groups to what the learner trains on: which groups train (the dead-group filter), and
which completion carries which advantage (the DAPO overlong filter leaves truncated ones out of the
loss, not out of their group's statistics). Plain Python over the loop's groups, tested without Ray."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from learner.grpo import compute_advantages, dead_group_mask
from learner.samples import TrainSample
from pipelines.training.overlong import is_truncated


def group_advantages(rewards: torch.Tensor, group_size: int, grpo: Any) -> tuple[torch.Tensor, dict]:
    """``learner.grpo.compute_advantages`` with the ``grpo`` config section's scale and eps."""
    return compute_advantages(rewards, group_size, scale=str(grpo.advantage_scale), eps=float(grpo.advantage_eps))


def groups_that_train(rewards: torch.Tensor, group_size: int, filter_dead: bool) -> list[bool]:
    """One flag per group: all groups, or with ``filter_dead`` only those whose rewards differ."""
    live = ~dead_group_mask(rewards, group_size)
    return [not filter_dead or bool(x) for x in live]


@dataclass
class LearnerBatch:
    samples: list[TrainSample]
    truncated: int  # completions cut at rollout.max_new_tokens, over every group
    overlong_dropped: int  # truncated completions of training groups kept out of the loss


def learner_batch(groups: Sequence[Any], advantages: torch.Tensor, trains: Sequence[bool],
                  overlong_filter: bool) -> LearnerBatch:
    """``advantages`` is flat over the groups' completions in order (group 0's, then group 1's, ...);
    completion ``si`` of group ``gi`` becomes sample ``{record id}#{si}`` with its own entry."""
    samples, truncated, dropped, k = [], 0, 0, 0
    for gi, sp in enumerate(groups):
        for si, comp in enumerate(sp.result["completions"]):
            cut = is_truncated(comp)
            truncated += cut
            drop = overlong_filter and cut
            dropped += bool(trains[gi] and drop)
            if trains[gi] and not drop:
                samples.append(TrainSample(sample_id=f"{sp.record.id}#{si}", prompt_text=sp.payload["prompt"],
                                           image=sp.payload["image"], completion_ids=comp["token_ids"],
                                           old_logprobs=comp["logprobs"], advantage=float(advantages[k])))
            k += 1
    if k != len(advantages):
        raise ValueError(f"{k} completions in the groups but {len(advantages)} advantages")
    return LearnerBatch(samples, truncated, dropped)
