"""Weighted combination of named rewards, keeping every component.

Med-R1 sums format and accuracy (both weight 1).  Components are stored
unweighted so traces and dashboards show what each reward actually said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rewards.registry import get_reward


@dataclass(frozen=True)
class RewardScore:
    total: float  # sum over components of weight * value
    components: dict[str, float] = field(hash=False)  # unweighted values by reward name


def combined_scores(completions: list, answers: list, weights: dict[str, float]) -> list[RewardScore]:
    """Score every completion with each named reward in ``weights``; total = weighted sum.

    Raises ValueError on a length mismatch, empty ``weights``, a non-finite weight,
    or a reward function returning the wrong number of scores; UnknownRewardError
    (a KeyError and ValueError) on an unknown name.
    """
    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
    if not weights:
        raise ValueError("weights is empty: name at least one reward")
    per_reward: dict[str, list[float]] = {}
    for name, w in weights.items():
        if not math.isfinite(float(w)):
            raise ValueError(f"weight for {name!r} is not finite: {w!r}")
        values = get_reward(name)(list(completions), list(answers))
        if len(values) != len(completions):
            raise ValueError(
                f"reward {name!r} returned {len(values)} scores for {len(completions)} completions"
            )
        per_reward[name] = [float(v) for v in values]
    scores = []
    for i in range(len(completions)):
        comps = {name: vals[i] for name, vals in per_reward.items()}
        total = sum(float(weights[name]) * v for name, v in comps.items())
        scores.append(RewardScore(total=total, components=comps))
    return scores
