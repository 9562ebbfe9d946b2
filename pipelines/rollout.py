"""Driver side of a rollout: shard prompts over the rollout actors, gather the
groups, and survive an actor that dies mid-step.

A dead actor's prompts are re-issued to a live one (or to it once Ray has
restarted it and it has caught up with the current weights), so every prompt
of a step is sampled exactly once from the driver's point of view.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

log = logging.getLogger(__name__)

_ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class RolloutOutcome:
    results: list[dict]  # one PromptResult dict per prompt, in input order
    versions: list[int]  # weight version each prompt was sampled with
    workers: list[int]  # which actor sampled it
    tokens: int = 0
    seconds: float = 0.0
    worker_seconds: list[float] = field(default_factory=list)
    reissued: int = 0


def shard(items: list, n: int) -> list[list[int]]:
    """Contiguous, nearly equal index shards (empty shards dropped)."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        if stop > start:
            out.append(list(range(start, stop)))
        start = stop
    return out


class RolloutPool:
    """The R rollout actors plus what it takes to keep them usable."""

    def __init__(self, workers: list, on_restart=None, max_reissues: int = 3):
        self.workers = workers
        self.on_restart = on_restart  # callable(worker) -> None: bring a restarted actor up to date
        self.max_reissues = max_reissues
        self.restarts = 0

    def generate(self, prompts: list[dict], sampling: dict) -> RolloutOutcome:
        t0 = time.perf_counter()
        results: list = [None] * len(prompts)
        versions = [-1] * len(prompts)
        owners = [-1] * len(prompts)
        pending = {}
        for wi, idx in enumerate(shard(prompts, len(self.workers))):
            pending[self._submit(wi, prompts, idx, sampling)] = (wi, idx, 0)
        tokens, wsec, reissued = 0, [], 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            wi, idx, attempt = pending.pop(ref)
            try:
                out = ray.get(ref)
            except _ACTOR_FAILURES as e:
                if attempt >= self.max_reissues:
                    raise RuntimeError(f"rollout prompts {idx[:3]}... failed {attempt + 1} times; last: {e}") from e
                self.restarts += 1
                target = self._recover(wi)
                log.warning("rollout-%d died (%s); re-issuing %d prompts to rollout-%d", wi, type(e).__name__,
                            len(idx), target)
                pending[self._submit(target, prompts, idx, sampling)] = (target, idx, attempt + 1)
                reissued += len(idx)
                continue
            for j, r in zip(idx, out["results"]):
                results[j], versions[j], owners[j] = r, out["weight_version"], out["worker"]
            tokens += out["tokens"]
            wsec.append(out["seconds"])
        return RolloutOutcome(results, versions, owners, tokens, time.perf_counter() - t0, wsec, reissued)

    def _submit(self, wi: int, prompts: list[dict], idx: list[int], sampling: dict):
        return self.workers[wi].generate.remote([prompts[j] for j in idx], sampling)

    def _recover(self, dead: int) -> int:
        """Wait for Ray to restart the actor (max_restarts) and update its weights; else use another."""
        w = self.workers[dead]
        try:
            ray.get(w.ready.remote(), timeout=600)
            if self.on_restart is not None:
                self.on_restart(w)
            return dead
        except Exception:
            alive = [i for i in range(len(self.workers)) if i != dead and self._alive(i)]
            if not alive:
                raise RuntimeError("every rollout actor is dead") from None
            return alive[0]

    def _alive(self, i: int) -> bool:
        try:
            ray.get(self.workers[i].get_weight_version.remote(), timeout=60)
            return True
        except Exception:
            return False
