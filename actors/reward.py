"""Ray actor applying the configured reward functions to a batch of completions."""
from __future__ import annotations

from dataclasses import asdict

import ray

from actors.sharding import contiguous_shards
from rewards import combined_scores, get_reward


class RewardWorker:
    def __init__(self, weights: dict[str, float]):
        # Resolve names now so a typo fails at start-up, not at the first step.
        for name in weights:
            get_reward(name)
        self.weights = dict(weights)

    def score(self, completions: list[str], answers: list[str]) -> list[dict]:
        return [asdict(s) for s in combined_scores(completions, answers, self.weights)]


RewardActor = ray.remote(RewardWorker)


def score_sharded(workers: list, completions: list[str], answers: list[str]) -> list[dict]:
    """Split a batch evenly over the reward actors and keep the order."""
    refs = [w.score.remote(completions[a:b], answers[a:b])
            for w, (a, b) in zip(workers, contiguous_shards(len(completions), len(workers)))]
    return [s for part in ray.get(refs) for s in part]
