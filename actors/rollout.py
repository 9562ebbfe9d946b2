"""The rollout side: R actors each owning one vLLM engine, and the driver-side pool.

- ``RolloutWorker`` (the Ray actor ``RolloutActor``): samples groups, takes weight
  pushes, sleeps and wakes in colocated mode.
- ``create_rollout_workers`` / ``wait_ready``: start them, named ``rollout-0`` ... for
  the dashboard, with CPU cores split between them when vLLM runs on the CPU.
- ``RolloutPool``: shards a batch of prompts over the actors and gathers the groups,
  surviving an actor that dies mid-step: a dead actor's prompts are re-issued to a
  live one (or to it once Ray has restarted it and it has caught up with the current
  weights), so every prompt of a step is sampled exactly once from the driver's view.
- ``Colocation``: rollout engines and learner ranks share the same devices. The
  engines sleep while the learner updates (vLLM level 1: weights to host memory and
  KV cache dropped; level 2: both dropped), then wake in two stages so the peak
  stays low: weights first, the new weights pushed into them, the KV cache last. On
  CPU vLLM has no sleep mode; the same calls then only pause and resume scheduling,
  so the sequence is exercised everywhere.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import ray
from ray.exceptions import ActorDiedError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.phase_threads import pin
from actors.sharding import contiguous_shards
from actors.vllm_engine import RolloutEngine
from actors.weight_stream import DEFAULT_CHUNK_BYTES
from actors.weight_sync import NotInWeightGroupError
from cluster.ray_utils import ACTOR_GONE, describe_failure

log = logging.getLogger(__name__)

_ACTOR_FAILURES = ACTOR_GONE  # ActorDiedError is a RayActorError


class RolloutWorker:
    def __init__(self, index: int, engine_kwargs: dict[str, Any], weight_version: int = 0,
                 initial_weights=None):
        self.index = index
        pin()  # the run's core plan, if any: vLLM's threads are bound inside it (VLLM_CPU_OMP_THREADS_BIND)
        self.engine = RolloutEngine(**engine_kwargs)
        self.weight_version = weight_version
        self.in_weight_group = False  # joined the learner's current weight group (not after a restart)
        if initial_weights is not None:
            # A restarted or late-joining worker catches up with the learner before it samples.
            self.load_weights(initial_weights, weight_version)

    def ready(self) -> dict:
        return {"index": self.index, "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid(), "weight_version": self.weight_version}

    def generate(self, prompts: list[dict], sampling: dict[str, Any]) -> dict:
        t0 = time.perf_counter()
        results = self.engine.generate(prompts, **sampling)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for r in results for c in r.completions)
        return {
            "results": [asdict(r) for r in results],
            "weight_version": self.weight_version,
            "worker": self.index,
            "seconds": seconds,
            "tokens": tokens,
            "batch_retries": self.engine.batch_retries,
        }

    def load_weights(self, state_dict: dict, version: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict:
        """The object-store push: ``state_dict`` in vLLM names (read from Ray's object store)."""
        t0 = time.perf_counter()
        n = self.engine.load_state_dict(state_dict, version, chunk_bytes)
        self.weight_version = self.engine.weight_version()  # vLLM's, stamped by finish_weight_update
        nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        return {"tensors": n, "bytes": nbytes, "seconds": time.perf_counter() - t0, "version": version}

    # vLLM's weight-transfer calls, driven by the learner's trainer engine (actors/transfer_client.py)
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.engine.init_weight_transfer_engine(init_info)
        self.in_weight_group = True

    def start_weight_update(self) -> list | None:
        if not self.in_weight_group:
            raise NotInWeightGroupError(f"was restarted since the weight group was formed (pid {os.getpid()})")
        return self.engine.start_weight_update()

    def update_weights(self, update_info) -> None:
        self.engine.update_weights(update_info)

    def finish_weight_update(self, version: int) -> None:
        self.engine.finish_weight_update(version)
        self.weight_version = self.engine.weight_version()

    def shutdown_weight_transfer_engine(self) -> None:
        self.in_weight_group = False
        self.engine.shutdown_weight_transfer_engine()

    def take_push_parts(self) -> dict[str, float]:
        return self.engine.take_push_parts()

    # Colocated mode (see Colocation below)
    def sleep(self, level: int = 1) -> dict:
        t0 = time.perf_counter()
        self.engine.sleep(level)
        return {"seconds": time.perf_counter() - t0, "frees_memory": self.engine.sleep_frees_memory}

    def wake_up(self, tags: Optional[list[str]] = None) -> bool:
        return self.engine.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.engine.is_sleeping()

    def get_weight_version(self) -> int:
        return self.weight_version

    def weight_stats(self) -> list[dict]:
        return self.engine.weight_stats()

    def param_names(self, names: list[str]) -> dict:
        return self.engine.param_names(names)


RolloutActor = ray.remote(RolloutWorker)


def cpu_core_binding(index: int, num_workers: int, num_cores: Optional[int] = None) -> str:
    """Cores for rollout worker ``index`` when vLLM runs on the CPU.

    Workers generate at the same time, so each gets its own cores rather than all
    fighting over every core (OpenMP threads spin; oversubscription is slow).
    """
    cores = num_cores or os.cpu_count() or 1
    if num_workers >= cores:
        return str(index % cores)
    per = cores // num_workers
    start = index * per
    return f"{start}-{start + per - 1}" if per > 1 else str(start)


def create_rollout_workers(
    num_workers: int,
    engine_kwargs: dict[str, Any],
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    custom_resources: Optional[dict[str, float]] = None,
    env_vars: Optional[list[dict[str, str]]] = None,
    placement_group=None,
    bundle_indices: Optional[list[int]] = None,
    weight_version: int = 0,
    initial_weights=None,
    max_restarts: int = 0,
    name_prefix: str = "rollout",
) -> list:
    workers = []
    for i in range(num_workers):
        options: dict[str, Any] = dict(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=dict(custom_resources or {}),
            name=f"{name_prefix}-{i}",
            max_restarts=max_restarts,
            max_concurrency=1,
        )
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars[i]}
        if placement_group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=placement_group,
                placement_group_bundle_index=bundle_indices[i] if bundle_indices else -1,
            )
        workers.append(RolloutActor.options(**options).remote(i, engine_kwargs, weight_version, initial_weights))
    return workers


def wait_ready(workers: list, timeout: float = 900.0) -> list[dict]:
    return ray.get([w.ready.remote() for w in workers], timeout=timeout)


def wait_restarted(worker, name: str, timeout: float = 900.0) -> None:
    """Block until ``worker`` answers again after a death (Ray restarts it), or raise naming it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(worker.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except _ACTOR_FAILURES + (ray.exceptions.GetTimeoutError,) as e:
            # ActorUnavailableError while Ray restarts it; ActorDiedError once restarts are used up.
            if isinstance(e, ActorDiedError) or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come back: {describe_failure(e)}") from e
            time.sleep(2.0)


@dataclass
class RolloutOutcome:
    results: list[dict]  # one PromptResult dict per prompt, in input order
    versions: list[int]  # weight version each prompt was sampled with
    workers: list[int]  # which actor sampled it
    tokens: int = 0
    seconds: float = 0.0
    worker_seconds: list[float] = field(default_factory=list)
    reissued: int = 0
    # With ``submit(..., then=f)``: (prompt indices, f's result) for each shard that was sampled
    follow_ups: list[tuple[list[int], Any]] = field(default_factory=list)


@dataclass
class PendingRollout:
    """A rollout in flight: object refs of each actor's shard, and what to re-issue if one dies."""

    prompts: list[dict]
    sampling: dict
    pending: dict  # ObjectRef -> (actor index, prompt indices, attempt)
    started: float
    then: Optional[Callable] = None  # then(shard ObjectRef, prompt indices): work chained on each shard
    follow_ups: dict = field(default_factory=dict)  # ObjectRef -> then's result for that shard


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

    def submit(self, prompts: list[dict], sampling: dict, then: Optional[Callable] = None) -> "PendingRollout":
        """Start sampling on every actor and return at once (async mode overlaps this with the update).

        ``then(ref, indices)`` is called for each shard as it is submitted (and again for a re-issued
        one) with the shard's ObjectRef: work it chains on the ref (e.g. a reward actor's task taking
        it as an argument) starts as soon as that shard is sampled, without the driver."""
        self.heal()
        if sampling.get("seed") is not None:
            # Seed by position in the whole batch, not in a shard: same samples for any number of actors.
            prompts = [{**p, "seed": int(sampling["seed"]) + j} for j, p in enumerate(prompts)]
        job = PendingRollout(prompts, sampling, {}, time.perf_counter(), then)
        for wi, (a, b) in enumerate(contiguous_shards(len(prompts), len(self.workers))):
            idx = list(range(a, b))
            job.pending[self._submit(wi, prompts, idx, sampling, job)] = (wi, idx, 0)
        return job

    def collect(self, job: "PendingRollout") -> RolloutOutcome:
        """Wait for a submitted rollout, re-issuing the prompts of any actor that dies meanwhile."""
        prompts, sampling, pending = job.prompts, job.sampling, job.pending
        results: list = [None] * len(prompts)
        versions = [-1] * len(prompts)
        owners = [-1] * len(prompts)
        tokens, wsec, reissued, follow_ups = 0, [], 0, []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            wi, idx, attempt = pending.pop(ref)
            try:
                out = ray.get(ref)
            except _ACTOR_FAILURES as e:
                job.follow_ups.pop(ref, None)  # chained on a shard that never came: it fails too
                if attempt >= self.max_reissues:
                    raise RuntimeError(f"rollout prompts {idx[:3]}... failed {attempt + 1} times; last: {describe_failure(e)}") from e
                self.restarts += 1
                target = self.recover(wi)
                log.warning("rollout-%d died (%s); re-issuing %d prompts to rollout-%d", wi, type(e).__name__,
                            len(idx), target)
                pending[self._submit(target, prompts, idx, sampling, job)] = (target, idx, attempt + 1)
                reissued += len(idx)
                continue
            for j, r in zip(idx, out["results"]):
                results[j], versions[j], owners[j] = r, out["weight_version"], out["worker"]
            tokens += out["tokens"]
            wsec.append(out["seconds"])
            if ref in job.follow_ups:
                follow_ups.append((idx, job.follow_ups.pop(ref)))
        return RolloutOutcome(results, versions, owners, tokens, time.perf_counter() - job.started, wsec, reissued,
                              follow_ups)

    def _submit(self, wi: int, prompts: list[dict], idx: list[int], sampling: dict,
                job: Optional["PendingRollout"] = None):
        ref = self.workers[wi].generate.remote([prompts[j] for j in idx], sampling)
        if job is not None and job.then is not None:
            job.follow_ups[ref] = job.then(ref, idx)
        return ref

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

    def recover(self, dead: int) -> int:
        """Where to re-issue a dead actor's prompts: a live actor now (not one still restarting),
        else the restarted one, once it is back at the current weights."""
        self._restarting.add(dead)
        alive = [i for i in range(len(self.workers)) if i not in self._restarting and self._alive(i)]
        if alive:
            return alive[0]  # the dead one is healed before the next rollout
        self.heal()
        return dead

    def _wait_ready(self, i: int, timeout: float) -> None:
        wait_restarted(self.workers[i], f"rollout-{i}", timeout)

    def _alive(self, i: int) -> bool:
        try:
            ray.get(self.workers[i].get_weight_version.remote(), timeout=60)
            return True
        except Exception:
            return False


class Colocation:
    def __init__(self, pool, level: int = 1):
        self.pool = pool  # RolloutPool: its worker list is the live one after restarts
        self.level = int(level)

    def sleep(self) -> dict:
        t0 = time.perf_counter()
        out = ray.get([w.sleep.remote(self.level) for w in self.pool.workers])
        return {"sleep_seconds": time.perf_counter() - t0,
                "sleep_frees_memory": float(all(o["frees_memory"] for o in out))}

    def wake_and_push(self, push: Callable[[], dict] | None) -> dict:
        """Wake the weights, run ``push`` (None: no push this step), then wake the KV cache."""
        t0 = time.perf_counter()
        ray.get([w.wake_up.remote(["weights"]) for w in self.pool.workers])
        result = push() if push is not None else {}
        ray.get([w.wake_up.remote(["kv_cache"]) for w in self.pool.workers])
        asleep = ray.get([w.is_sleeping.remote() for w in self.pool.workers])
        if any(asleep):
            raise RuntimeError(f"rollout engines still asleep after wake-up: {asleep}")
        return {**result, "wake_seconds": time.perf_counter() - t0}
