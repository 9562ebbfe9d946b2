"""Ray shell around ``learner.deepspeed_learner.GRPOLearner``: one actor per DeepSpeed rank.

``LearnerGroup`` (driver side, not an actor) starts the ranks, wires torch.distributed
(rank 0 picks MASTER_ADDR/PORT), shards each batch across ranks and merges metrics.
Everything else goes through two generic calls: ``call_all`` (every rank, e.g. a
checkpoint: ZeRO saves and loads collectively) and ``call_rank0`` (e.g. the weight-push sender).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Optional, Sequence

import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.phase_threads import phase_threads, pin
from actors.sharding import contiguous_shards
from actors.weight_verify import tensor_stats
from cluster.cores import CORES_ENV, cores_text
from cluster.ray_utils import describe_failure, free_address, kill_quietly
from learner.policy import exported_parameters


class LearnerRankError(ray.exceptions.RayError):
    """One learner rank failed (or died) in a call every rank takes part in; names the rank and the root cause.
    Raised as soon as that rank's result is in: the other ranks may be waiting for it in a collective."""

    def __init__(self, rank: int, world_size: int, method: str, error: BaseException):
        self.rank = rank
        super().__init__(f"learner-{rank} (rank {rank} of {world_size}) failed in {method}: "
                         f"{describe_failure(error)}")


@contextlib.contextmanager
def _hidden_module(name: str):
    """Make ``import name`` fail inside the block when nothing has imported it yet.

    DeepSpeed's autotuner imports mlflow on import when it is installed: about 4 s of every
    rank's start-up on 2 cores, for a module a rank never uses (it does not autotune; the
    driver does the tracking). Afterwards the module imports normally again."""
    hide = name not in sys.modules
    if hide:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        if hide and sys.modules.get(name, 0) is None:
            del sys.modules[name]


@ray.remote
class LearnerWorker:
    """One learner rank. Construction is cheap; ``setup`` builds the DeepSpeed engine."""

    def __init__(self):
        self.learner = None
        self._cores = None  # this rank's cores from the run's core plan (None: no plan)

    def ready(self) -> bool:
        return True

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def free_address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (rank 0's is the process group's master address)."""
        return free_address()

    def setup(self, env: dict[str, str], model_path: str, learner_cfg, grpo_cfg, kwargs: dict) -> bool:
        os.environ.update({k: str(v) for k, v in env.items()})
        self._cores = pin()  # before DeepSpeed and torch start their threads: they inherit it
        phase_threads(self._cores)
        # Imported here, after the rank's env is set: DeepSpeed reads it on import.
        with _hidden_module("mlflow"):
            from learner.deepspeed_learner import GRPOLearner

        self.learner = GRPOLearner(model_path, learner_cfg, grpo_cfg, **kwargs)
        return True

    def train_step(self, samples) -> dict[str, float]:
        threads = phase_threads(self._cores)  # the learner phase: every core this rank was given
        return {**self.learner.train_step(samples), "learner_threads": threads}

    def gather_state_dict(self):
        phase_threads(self._cores)
        return self.learner.gather_state_dict()

    def weights_sha256(self) -> Optional[str]:
        return self.learner.weights_sha256()

    def save_checkpoint(self, directory: str, client_state: Optional[dict] = None,
                        files: Optional[dict[str, str]] = None, export_hf: Optional[bool] = None) -> str:
        return self.learner.save_checkpoint(directory, client_state, files, export_hf)

    def load_checkpoint(self, directory: str, verify: bool = True) -> dict:
        return self.learner.load_checkpoint(directory, verify)

    def greedy_generate(self, prompt_text: str, image_png: bytes, max_new_tokens: int) -> list[int]:
        return self.learner.greedy_generate(prompt_text, image_png, max_new_tokens)

    # Weight push by a trainer engine (gloo, nccl, ipc, shm): this rank's half of vLLM's weight transfer.
    def init_weight_transfer(self, backend: str, rollout_handles: list, address, *, tp_size: int = 1,
                             dtype: Optional[str] = None, chunk_bytes: int, timeout_s: float) -> bool:
        # Imported here: it loads vLLM, which only ranks that push by broadcast need.
        from actors.transfer_client import TrainerTransfer

        self.shutdown_weight_transfer()
        self._transfer = TrainerTransfer(self.learner.engine.module, backend, rollout_handles,
                                         rank=int(os.environ.get("RANK", "0")), address=address, tp_size=tp_size,
                                         dtype=getattr(torch, dtype) if dtype else None, chunk_bytes=chunk_bytes,
                                         timeout_s=timeout_s)
        return True

    def push_weights(self, version: int, record: bool = True) -> dict:
        phase_threads(self._cores)
        return self._transfer.push(version, record)

    def shutdown_weight_transfer(self) -> None:
        transfer, self._transfer = getattr(self, "_transfer", None), None
        if transfer is not None:
            transfer.shutdown()

    def weight_stats(self, dtype: Optional[str] = None) -> dict[str, list[float]]:
        """[sum, sum of squares, numel] per exported tensor, cast to the engines' dtype (actors/weight_verify.py)."""
        cast = getattr(torch, dtype) if dtype else None
        return {ck: tensor_stats(p.detach().to(cast) if cast is not None and p.is_floating_point() else p)
                for _, ck, p in exported_parameters(self.learner.engine.module)}


_SUMMED = {"num_tokens", "num_samples", "vision_tokens_masked"}
_MAXED = {"learner_time", "optimizer_steps", "learner_threads"}


def merge_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Rank mean; token/sample counts summed; time and step counters maxed."""
    keys = sorted({k for m in per_rank for k in m})
    out = {}
    for k in keys:
        vals = [float(m[k]) for m in per_rank if k in m]
        if k in _SUMMED:
            out[k] = sum(vals)
        elif k in _MAXED:
            out[k] = max(vals)
        elif k == "loss":  # each rank reports world * its share; the mean over all ranks is the global loss
            out[k] = sum(vals) / len(per_rank)
        else:
            out[k] = sum(vals) / len(vals)
    return out


class LearnerGroup:
    """Driver-side helper owning N ``LearnerWorker`` actors (``learner-{i}``)."""

    def __init__(self, model_path: str, learner_cfg, grpo_cfg, *, total_steps: int, samples_per_step: int,
                 num_workers: Optional[int] = None, resources=None, placement_group=None,
                 bundle_indices: Optional[Sequence[int]] = None, name_prefix: str = "learner",
                 env: Optional[dict[str, str]] = None, learner_kwargs: Optional[dict[str, Any]] = None,
                 ready_timeout_s: float = 900.0, cores: Optional[Sequence[list[int]]] = None):
        self.world_size = int(num_workers if num_workers is not None else learner_cfg.num_workers)
        res = resources if resources is not None else learner_cfg.resources_per_worker
        num_cpus = float(getattr(res, "num_cpus", 1.0))
        num_gpus = float(getattr(res, "num_gpus", 0.0))
        custom = dict(getattr(res, "custom", {}) or {})
        self.zero_stage = int(learner_cfg.zero_stage)
        self.workers = []
        for i in range(self.world_size):
            opts: dict[str, Any] = dict(name=f"{name_prefix}-{i}", num_cpus=num_cpus, num_gpus=num_gpus)
            if custom:
                opts["resources"] = custom
            if placement_group is not None:
                idx = bundle_indices[i] if bundle_indices is not None else i
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=idx)
            if env:
                opts["runtime_env"] = {"env_vars": dict(env)}
            self.workers.append(LearnerWorker.options(**opts).remote())
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"{self.world_size} learner actor(s) not started after {ready_timeout_s:.0f}s: "
                               f"each needs CPU={num_cpus} GPU={num_gpus} {custom or ''} (in its placement-group "
                               f"bundle when given); see `ray status`") from None

        addr, port = self.call_rank0("free_address")
        ips = ray.get([w.node_ip.remote() for w in self.workers])
        seen: dict[str, int] = {}
        per_rank_samples = -(-int(samples_per_step) // self.world_size)
        kwargs = dict(total_steps=int(total_steps), samples_per_step_per_rank=max(per_rank_samples, 1))
        kwargs.update(learner_kwargs or {})
        setups = []
        for rank, (w, ip) in enumerate(zip(self.workers, ips)):
            local = seen.get(ip, 0)
            seen[ip] = local + 1
            env_r = {"MASTER_ADDR": addr, "MASTER_PORT": str(port), "RANK": str(rank),
                     "WORLD_SIZE": str(self.world_size),
                     # With GPUs Ray shows each actor only its own device, so it is cuda:0 there.
                     "LOCAL_RANK": "0" if num_gpus > 0 else str(local)}
            if cores:  # the run's core plan (cluster/cores.py): this rank pins itself to its share
                env_r[CORES_ENV] = cores_text(cores[rank])
            setups.append(w.setup.remote(env_r, str(model_path), learner_cfg, grpo_cfg, kwargs))
        ray.get(setups)

    # ------------------------------------------------------------------
    def call_all(self, method: str, *args) -> list:
        """Call ``method`` on every rank and wait; one result per rank (LearnerRankError at the first failure)."""
        return self._gather([getattr(w, method).remote(*args) for w in self.workers], method)

    def _gather(self, refs: list, method: str) -> list:
        """Results in rank order. The first rank to fail is named at once: waiting for all (``ray.get``) would
        wait on ranks blocked in a collective with the failed one until the process group times out."""
        rank_of = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[rank_of[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise LearnerRankError(rank_of[done[0]], self.world_size, method, e) from e
        return results

    def call_rank0(self, method: str, *args, wait: bool = True):
        """Call ``method`` on rank 0 alone; ``wait=False`` returns the ObjectRef."""
        ref = getattr(self.workers[0], method).remote(*args)
        return ray.get(ref) if wait else ref

    def train_step(self, samples: Sequence, group_size: Optional[int] = None) -> dict[str, float]:
        samples = list(samples)
        chunks = contiguous_shards(len(samples), self.world_size, unit=group_size or 1, keep_empty=True)
        refs = [w.train_step.remote(samples[a:b]) for w, (a, b) in zip(self.workers, chunks)]
        return merge_metrics(self._gather(refs, "train_step"))

    def gather_state_dict(self, as_ref: bool = False):
        """All ranks gather (collective under ZeRO-3); returns rank 0's full dict (or its ObjectRef)."""
        refs = [w.gather_state_dict.remote() for w in self.workers]
        ray.get(refs[1:])
        return refs[0] if as_ref else ray.get(refs[0])

    def weights_sha256(self):
        """ObjectRef of the SHA-256 of the current weights (rank 0's; every rank gathers under ZeRO-3).
        Queued behind the push on the learner actors, so the driver's next rollout overlaps it."""
        ranks = self.workers if self.zero_stage == 3 and self.world_size > 1 else self.workers[:1]
        return [w.weights_sha256.remote() for w in ranks][0]

    def greedy_generate(self, prompt_text: str, image_png: bytes, max_new_tokens: int) -> list[int]:
        if self.zero_stage == 3 and self.world_size > 1:  # partitioned weights: every rank takes part
            return self.call_all("greedy_generate", prompt_text, image_png, max_new_tokens)[0]
        return self.call_rank0("greedy_generate", prompt_text, image_png, max_new_tokens)

    def shutdown(self) -> None:
        kill_quietly(self.workers)
        self.workers = []
