"""Ray actor applying the configured reward functions to a batch of completions.

Scoring is pure (the same texts give the same scores), so a reward actor that dies
mid-batch costs nothing but time: Ray restarts it (``max_restarts``) and its shard is
scored again, on the restarted actor or, failing that, on another one."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import ray
from ray.exceptions import GetTimeoutError

from actors.sharding import contiguous_shards
from cluster.ray_utils import ACTOR_GONE, describe_failure
from rewards import combined_scores, get_reward

log = logging.getLogger(__name__)

REWARD_MAX_RESTARTS = 3
RESTART_WAIT_S = 180.0  # how long a lone reward actor may take to come back before its shard's retry fails
_ACTOR_FAILURES = ACTOR_GONE  # the actor died: not a bug in a reward


class RewardWorker:
    def __init__(self, weights: dict[str, float]):
        # Resolve names now so a typo fails at start-up, not at the first step.
        for name in weights:
            get_reward(name)
        self.weights = dict(weights)

    def score(self, completions: list[str], answers: list[str]) -> list[dict]:
        return [asdict(s) for s in combined_scores(completions, answers, self.weights)]

    def score_shard(self, shard: dict, answers: list[str]) -> list[list[dict]]:
        """Score a rollout actor's output (``RolloutWorker.generate``) as soon as it exists: passed as
        an ObjectRef, Ray starts this once that shard is sampled. One list per prompt ([] for a prompt
        that failed preprocessing), ``answers`` one per prompt of the shard."""
        texts, owners = [], []
        for j, (res, answer) in enumerate(zip(shard["results"], answers)):
            for comp in res["completions"] if not res["error"] else []:
                texts.append(comp["text"])
                owners.append((j, answer))
        flat = self.score(texts, [a for _, a in owners]) if texts else []
        out: list[list[dict]] = [[] for _ in shard["results"]]
        for (j, _), s in zip(owners, flat):
            out[j].append(s)
        return out


RewardActor = ray.remote(RewardWorker)


def score_sharded(workers: list, completions: list[str], answers: list[str], *, max_rescores: int = 3,
                  stats: dict | None = None) -> list[dict]:
    """Split a batch evenly over the reward actors and keep the order. A shard whose actor dies is
    scored again (on the next actor; on the same one, restarted by Ray, when it is the only one), up
    to ``max_rescores`` times; ``stats["reward_rescored"]`` counts the completions sent again."""
    shards = list(zip(range(len(workers)), contiguous_shards(len(completions), len(workers))))
    refs = {k: workers[k].score.remote(completions[a:b], answers[a:b]) for k, (a, b) in shards}
    parts = []
    for k, (a, b) in shards:
        for attempt in range(max_rescores + 1):
            try:
                parts.append(ray.get(refs[k]))
                break
            except _ACTOR_FAILURES as e:
                if attempt == max_rescores:
                    raise RuntimeError(f"reward-{k}: scoring completions {a}..{b - 1} failed {attempt + 1} times; "
                                       f"last: {describe_failure(e)}") from e
                # Another (live) actor first; the dead one only after the others, or alone, once Ray has
                # restarted it (a call to an actor being restarted fails at once: give it time).
                target = (k + 1 + attempt) % len(workers)
                if target == k:
                    wait_restarted(workers[k])
                log.warning("reward-%d died while scoring (%s); scoring its %d completions again on reward-%d",
                            k, type(e).__name__, b - a, target)
                refs[k] = workers[target].score.remote(completions[a:b], answers[a:b])
                if stats is not None:
                    stats["reward_rescored"] = stats.get("reward_rescored", 0) + (b - a)
    return [s for part in parts for s in part]


def wait_restarted(worker, timeout_s: float = RESTART_WAIT_S) -> None:
    """Until a restarted reward actor answers again (or ``timeout_s``): restarting takes a new process and its
    imports, seconds to tens of seconds on a loaded machine, longer than a fixed back-off would wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(worker.score.remote([], []), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (*_ACTOR_FAILURES, GetTimeoutError):
            time.sleep(1.0)
