"""Pushing learner weights into the running vLLM engines, behind one interface.

- ``object_store`` (CPU, and a fallback anywhere): rank 0's full state dict
  (vLLM names) is put in Ray's object store once and every rollout actor
  reloads from that same object (zero-copy reads on one node).
- ``nccl`` (GPUs): learner rank 0 and every vLLM worker form one NCCL group;
  tensors are broadcast in buckets of ``bucket_size_mb`` so the peak extra
  memory is one bucket, not the model.

Both bump the weight version that rollouts then carry.
"""
from __future__ import annotations

import time

import ray


class ObjectStoreWeightSync:
    name = "object_store"

    def push(self, learner_group, rollout_workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        payload_ref = learner_group.push_state_dict(as_ref=True)  # all ranks take part (ZeRO-3 gathers)
        t_gather = time.perf_counter() - t0
        refs = [w.load_weights.remote(payload_ref, version) for w in rollout_workers]
        stats, failed = [], []
        for i, ref in enumerate(refs):
            try:
                stats.append(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                failed.append(i)  # a dying rollout actor: Ray restarts it and the pool catches it up
        seconds = time.perf_counter() - t0
        nbytes = stats[0]["bytes"] if stats else 0
        return {"push_seconds": seconds, "push_gather_seconds": t_gather, "push_bytes": nbytes,
                "push_bytes_per_s": nbytes / seconds if seconds > 0 else 0.0, "weight_version": version,
                "failed_workers": failed}


class NCCLWeightSync:
    """GPU path. The group is formed lazily on the first push."""

    name = "nccl"

    def __init__(self, bucket_size_mb: int = 256, tp_size: int = 1):
        self.bucket_bytes = int(bucket_size_mb) << 20
        self.tp_size = tp_size
        self._ready = False

    def _init_group(self, learner_group, rollout_workers: list) -> None:
        addr, port = learner_group.weight_group_address()
        world = 1 + len(rollout_workers) * self.tp_size
        refs = [w.init_weight_group.remote(addr, port, 1 + i * self.tp_size, world)
                for i, w in enumerate(rollout_workers)]
        refs.append(learner_group.init_weight_group(addr, port, world))
        ray.get(refs)
        self._ready = True

    def push(self, learner_group, rollout_workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        if not self._ready:
            self._init_group(learner_group, rollout_workers)
        buckets = learner_group.weight_buckets(self.bucket_bytes)  # [[(name, dtype, shape), ...], ...]
        nbytes = 0
        for i, specs in enumerate(buckets):
            last = i == len(buckets) - 1
            recv = [w.receive_broadcast.remote(specs, version if last else None) for w in rollout_workers]
            send = learner_group.broadcast_bucket(i)
            nbytes += ray.get(send)
            ray.get(recv)
        seconds = time.perf_counter() - t0
        return {"push_seconds": seconds, "push_bytes": nbytes,
                "push_bytes_per_s": nbytes / seconds if seconds > 0 else 0.0, "weight_version": version}


def make_weight_sync(backend: str, bucket_size_mb: int = 256, tp_size: int = 1):
    if backend == "object_store":
        return ObjectStoreWeightSync()
    if backend == "nccl":
        return NCCLWeightSync(bucket_size_mb, tp_size)
    raise ValueError(f"unknown weight_sync.backend '{backend}'; choose object_store or nccl")
