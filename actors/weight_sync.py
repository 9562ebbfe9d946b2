"""Pushing learner weights into the running vLLM engines, behind one interface.

Each backend keeps its three parts together: the driver's ``push`` (a
``*WeightSync`` class), the sending half run on learner rank 0, and the
receiving half run inside every vLLM worker (``actors/vllm_worker_ext.py``
only forwards to it).

- ``object_store`` (CPU, and a fallback anywhere): rank 0's full state dict
  (vLLM names) is put in Ray's object store once and every rollout actor
  reloads from that same object (zero-copy reads on one node).
- ``nccl`` (GPUs): learner rank 0 and every vLLM worker form one NCCL group;
  tensors are broadcast in buckets of ``bucket_size_mb`` so the peak extra
  memory is one bucket, not the model. Written for ZeRO stages 0-2, where
  rank 0 holds every parameter in full; the config refuses nccl with ZeRO-3.

Both bump the weight version that rollouts then carry.
"""
from __future__ import annotations

import time

import ray
import torch
from safetensors.torch import load as load_safetensors

from learner.policy import exported_parameters


class ObjectStoreWeightSync:
    name = "object_store"

    def push(self, learner_group, rollout_workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        payload_ref = learner_group.gather_state_dict(as_ref=True)  # all ranks take part (ZeRO-3 gathers)
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
        addr, port = learner_group.call_rank0("free_address")
        world = 1 + len(rollout_workers) * self.tp_size
        refs = [w.init_weight_group.remote(addr, port, 1 + i * self.tp_size, world)
                for i, w in enumerate(rollout_workers)]
        refs.append(learner_group.call_rank0("init_weight_group", addr, port, world, wait=False))
        ray.get(refs)
        self._ready = True

    def push(self, learner_group, rollout_workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        if not self._ready:
            self._init_group(learner_group, rollout_workers)
        buckets = learner_group.call_rank0("weight_buckets", self.bucket_bytes)  # [[(name, dtype, shape), ...], ...]
        nbytes = 0
        for i, specs in enumerate(buckets):
            last = i == len(buckets) - 1
            recv = [w.receive_broadcast.remote(specs, version if last else None) for w in rollout_workers]
            send = learner_group.call_rank0("broadcast_bucket", i, wait=False)
            nbytes += ray.get(send)
            ray.get(recv)
        seconds = time.perf_counter() - t0
        return {"push_seconds": seconds, "push_bytes": nbytes,
                "push_bytes_per_s": nbytes / seconds if seconds > 0 else 0.0, "weight_version": version}


def receive_safetensors(model_runner, payload: bytes) -> int:
    """Object-store receiving half, in a vLLM worker: reload from safetensors bytes.

    ``reload_weights`` (not ``model.load_weights``): on CPU the layers are repacked
    after the first load and lose their weight_loader; a reload handles that."""
    tensors = load_safetensors(payload)
    model_runner.reload_weights(weights_iterator=iter(tensors.items()))
    return len(tensors)


def _nccl_group(master_address: str, master_port: int, rank: int, world_size: int, device):
    # vLLM's own NCCL wrapper: no torch.distributed group to clash with the engine's.
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


class NCCLWeightSender:
    """NCCL sending half, on learner rank 0 (rank 0 of the group; vLLM workers follow)."""

    def __init__(self, master_address: str, master_port: int, world_size: int):
        self.comm = _nccl_group(master_address, master_port, 0, world_size, torch.cuda.current_device())

    @staticmethod
    def bucket_specs(module, bucket_bytes: int) -> list[list[tuple[str, str, list[int]]]]:
        """(vLLM name, dtype, shape) per parameter, grouped so a bucket holds about ``bucket_bytes``."""
        buckets, current, size = [], [], 0
        for _, ck, p in exported_parameters(module):
            nbytes = p.numel() * p.element_size()
            if current and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append((ck, str(p.dtype).removeprefix("torch."), list(p.shape)))
            size += nbytes
        if current:
            buckets.append(current)
        return buckets

    def broadcast(self, module, specs: list[tuple[str, str, list[int]]]) -> int:
        """Send one bucket in ``specs`` order; returns the bytes sent."""
        wanted = {name for name, _, _ in specs}
        params = {ck: p for _, ck, p in exported_parameters(module) if ck in wanted}
        sent = 0
        for name, _, _ in specs:
            t = params[name].detach().contiguous()
            self.comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
            sent += t.numel() * t.element_size()
        torch.cuda.current_stream().synchronize()
        return sent


class NCCLWeightReceiver:
    """NCCL receiving half, in one vLLM worker (group rank = its rank in the engine + the offset)."""

    def __init__(self, device, master_address: str, master_port: int, rank_offset: int, world_size: int):
        from vllm.distributed.parallel_state import get_world_group

        self.device = device
        self.comm = _nccl_group(master_address, master_port, get_world_group().rank + rank_offset, world_size,
                                device)

    def receive(self, model_runner, specs: list[tuple[str, str, list[int]]]) -> int:
        """Receive one bucket: ``specs`` lists (name, dtype, shape) in broadcast order."""
        received = []
        for name, dtype, shape in specs:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self.comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
            received.append((name, buf))
        torch.cuda.current_stream().synchronize()
        model_runner.model.load_weights(weights=received)
        return len(received)


def make_weight_sync(backend: str, bucket_size_mb: int = 256, tp_size: int = 1):
    if backend == "object_store":
        return ObjectStoreWeightSync()
    if backend == "nccl":
        return NCCLWeightSync(bucket_size_mb, tp_size)
    raise ValueError(f"unknown weight_sync.backend '{backend}'; choose object_store or nccl")
