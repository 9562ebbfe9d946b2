"""Ray actor applying the configured reward functions to a batch of completions."""
from __future__ import annotations

from dataclasses import asdict

import ray

from rewards import combined_scores


class RewardWorker:
    def __init__(self, weights: dict[str, float]):
        # Resolve names now so a typo fails at start-up, not at the first step.
        from rewards import get_reward

        for name in weights:
            get_reward(name)
        self.weights = dict(weights)

    def score(self, completions: list[str], answers: list[str]) -> list[dict]:
        return [asdict(s) for s in combined_scores(completions, answers, self.weights)]


RewardActor = ray.remote(RewardWorker)


def score_sharded(workers: list, completions: list[str], answers: list[str]) -> list[dict]:
    """Split a batch evenly over the reward actors and keep the order."""
    n = len(workers)
    size = -(-len(completions) // n) if completions else 0
    refs = [w.score.remote(completions[i * size:(i + 1) * size], answers[i * size:(i + 1) * size])
            for i, w in enumerate(workers) if completions[i * size:(i + 1) * size]]
    return [s for part in ray.get(refs) for s in part]
