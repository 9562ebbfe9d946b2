"""Reward scoring streamed per rollout shard: each shard is scored as soon as it is sampled.

``ScoreEachShard`` is given to ``RolloutPool.submit(then=...)``: for every shard it
submits a reward actor's ``score_shard`` with the shard's ObjectRef as argument, so Ray
starts scoring the groups of one rollout actor the moment that actor returns, while the
others still sample (and, in async mode, while the learner updates on the previous
step), instead of after the whole batch. ``gather_scores`` collects them in batch
order; a shard whose chained scoring failed (a reward actor died) is scored again the
ordinary way (``RunContext.score``, which survives further deaths), and counted.
"""
from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

log = logging.getLogger(__name__)

_FAILURES = (RayActorError, ActorUnavailableError)


class ScoreEachShard:
    """``then`` for ``RolloutPool.submit``: shard k is scored on reward actor k mod n."""

    def __init__(self, reward_workers: list, answers: list[str]):
        self.workers = list(reward_workers)
        self.answers = list(answers)  # one per prompt of the batch, in batch order
        self._n = 0

    def __call__(self, shard_ref, indices: list[int]):
        worker = self.workers[self._n % len(self.workers)]
        self._n += 1
        return worker.score_shard.remote(shard_ref, [self.answers[j] for j in indices])


def gather_scores(ctx: Any, outcome: Any, answers: list[str]) -> list[dict]:
    """One score per completion of the prompts that were sampled without error, in batch order
    (the order ``RunContext.score`` would return), from the streamed shards where they exist."""
    per_prompt: list = [None] * len(outcome.results)
    for indices, ref in getattr(outcome, "follow_ups", []):
        try:
            parts = ray.get(ref)
        except _FAILURES as e:
            log.warning("a reward actor died while scoring a shard of %d prompts (%s); scoring it again",
                        len(indices), type(e).__name__)
            continue
        for j, part in zip(indices, parts):
            per_prompt[j] = part
    todo = [j for j, res in enumerate(outcome.results) if not res["error"] and per_prompt[j] is None]
    if todo:
        texts = [c["text"] for j in todo for c in outcome.results[j]["completions"]]
        again = ctx.score(texts, [answers[j] for j in todo for _ in outcome.results[j]["completions"]])
        if getattr(outcome, "follow_ups", None):  # streamed, but this part had to be scored again
            ctx.reward_stats["reward_rescored"] = ctx.reward_stats.get("reward_rescored", 0) + len(texts)
        k = 0
        for j in todo:
            n = len(outcome.results[j]["completions"])
            per_prompt[j], k = again[k:k + n], k + n
    return [s for j, res in enumerate(outcome.results) if not res["error"] for s in per_prompt[j]]
