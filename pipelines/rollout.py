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

from pipelines.evaluation import contiguous_shards

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


@dataclass
class PendingRollout:
    """A rollout in flight: object refs of each actor's shard, and what to re-issue if one dies."""

    prompts: list[dict]
    sampling: dict
    pending: dict  # ObjectRef -> (actor index, prompt indices, attempt)
    started: float


class RolloutPool:
    """The R rollout actors plus what it takes to keep them usable."""

    def __init__(self, workers: list, on_restart=None, max_reissues: int = 3):
        self.workers = workers
        self.on_restart = on_restart  # callable(worker) -> None: bring a restarted actor up to date
        self.max_reissues = max_reissues
        self.restarts = 0
        self._restarting: set[int] = set()

    def generate(self, prompts: list[dict], sampling: dict) -> RolloutOutcome:
        return self.collect(self.submit(prompts, sampling))

    def submit(self, prompts: list[dict], sampling: dict) -> "PendingRollout":
        """Start sampling on every actor and return at once (async mode overlaps this with the update)."""
        self.heal()
        if sampling.get("seed") is not None:
            # Seed by position in the whole batch, not in a shard: same samples for any number of actors.
            prompts = [{**p, "seed": int(sampling["seed"]) + j} for j, p in enumerate(prompts)]
        pending = {}
        for wi, (a, b) in enumerate(contiguous_shards(len(prompts), len(self.workers))):
            idx = list(range(a, b))
            pending[self._submit(wi, prompts, idx, sampling)] = (wi, idx, 0)
        return PendingRollout(prompts, sampling, pending, time.perf_counter())

    def collect(self, job: "PendingRollout") -> RolloutOutcome:
        """Wait for a submitted rollout, re-issuing the prompts of any actor that dies meanwhile."""
        prompts, sampling, pending = job.prompts, job.sampling, job.pending
        results: list = [None] * len(prompts)
        versions = [-1] * len(prompts)
        owners = [-1] * len(prompts)
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
        return RolloutOutcome(results, versions, owners, tokens, time.perf_counter() - job.started, wsec, reissued)

    def _submit(self, wi: int, prompts: list[dict], idx: list[int], sampling: dict):
        return self.workers[wi].generate.remote([prompts[j] for j in idx], sampling)

    def heal(self, timeout: float = 900.0) -> None:
        """Wait for actors Ray is restarting and bring each up to the current weights."""
        for i in sorted(self._restarting):
            self._wait_ready(i, timeout)
            if self.on_restart is not None:
                self.on_restart(self.workers[i])
        self._restarting.clear()

    def mark_dead(self, i: int) -> None:
        """An actor seen failing outside a rollout (e.g. during a weight push): heal it before the next one."""
        self.restarts += 1
        self._restarting.add(i)

    def _recover(self, dead: int) -> int:
        """Where to re-issue a dead actor's prompts: a live actor now, else the restarted one."""
        self._restarting.add(dead)
        alive = [i for i in range(len(self.workers)) if i not in self._restarting and self._alive(i)]
        if alive:
            return alive[0]  # the dead one is healed before the next rollout
        self.heal()
        return dead

    def _wait_ready(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ray.get(self.workers[i].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except _ACTOR_FAILURES + (ray.exceptions.GetTimeoutError,) as e:
                # ActorUnavailableError while Ray restarts it; ActorDiedError once restarts are used up.
                if isinstance(e, ActorDiedError) or time.monotonic() > deadline:
                    raise RuntimeError(f"rollout-{i} did not come back: {e}") from e
                time.sleep(2.0)

    def _alive(self, i: int) -> bool:
        try:
            ray.get(self.workers[i].get_weight_version.remote(), timeout=60)
            return True
        except Exception:
            return False
