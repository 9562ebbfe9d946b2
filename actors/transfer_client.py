"""The trainer's half of a weight push, on vLLM's API: what to send and to whom.

- ``ExportedWeights``: a vLLM ``WeightSource`` over the learner's parameters under
  checkpoint (vLLM) names, cast to the engines' dtype.
- ``RolloutClient``: a vLLM ``VLLMWeightSyncClient`` over the rollout actors. It
  gives each engine its own slot in the transfer group (our R engines are separate
  vLLM instances, not one engine's data-parallel replicas, so vLLM cannot number
  them), puts a timeout on every call, names the actor that failed (``RolloutLostError``
  with its slot when it died, so the driver can push to the others without it), and
  stamps the weight version when an update finishes.
- ``TrainerTransfer``: builds the trainer engine from vLLM's factory for a backend
  and runs one push; the learner rank actor holds one.
"""
from __future__ import annotations

import time
from typing import Any

import ray
import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

from actors import transfer_engines, transfer_shm
from actors.weight_stream import DEFAULT_CHUNK_BYTES
from actors.weight_sync import NotInWeightGroupError, RolloutLostError, WeightPushError
from cluster.ray_utils import ACTOR_GONE, describe_failure, root_of
from learner.policy import exported_parameters


class ExportedWeights(WeightSource):
    def __init__(self, module: torch.nn.Module, dtype: torch.dtype | None = None):
        self.module = module
        self.dtype = dtype

    def _cast(self, p: torch.Tensor) -> torch.Tensor:
        p = p.detach()
        return p.to(self.dtype) if self.dtype is not None and p.is_floating_point() else p

    def metadata(self) -> list[ParamMeta]:
        out = []
        for _, name, p in exported_parameters(self.module):
            dtype = self.dtype if self.dtype is not None and p.is_floating_point() else p.dtype
            out.append(ParamMeta(name, dtype, tuple(p.shape)))
        return out

    def __iter__(self):
        for _, name, p in exported_parameters(self.module):
            yield name, self._cast(p)


class RolloutClient:
    """``VLLMWeightSyncClient`` fanning out to the rollout actors, slot ``i`` for actor ``i``."""

    def __init__(self, handles: list, backend: str, *, tp_size: int = 1, timeout_s: float = 600.0):
        self.handles = list(handles)
        self.backend = backend
        self.tp_size = int(tp_size)
        self.timeout_s = float(timeout_s)
        self.version: int | None = None  # stamped into every engine by finish_weight_update

    def _all(self, step: str, calls: list) -> list:
        refs = {ref: i for i, ref in enumerate(calls)}
        deadline = time.monotonic() + self.timeout_s
        out: list[Any] = [None] * len(calls)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                late = sorted(refs[r] for r in pending)
                raise WeightPushError(f"weight push ({self.backend}): {step} not done by rollout-"
                                      f"{', rollout-'.join(map(str, late))} after {self.timeout_s:.0f}s "
                                      f"(weight_sync.timeout_s)")
            i = refs[done[0]]
            try:
                out[i] = ray.get(done[0])
            except ACTOR_GONE as e:
                # Dead or restarting: the driver pushes to the others without it (actors/weight_sync.py).
                raise RolloutLostError(f"weight push ({self.backend}): rollout-{i} was lost in {step}: "
                                       f"{describe_failure(e)}", i) from e
            except Exception as e:
                restarted = root_of(e, NotInWeightGroupError)  # restarted since the group was formed
                if restarted is not None:
                    raise RolloutLostError(f"weight push ({self.backend}): rollout-{i} {restarted}", i) from e
                raise WeightPushError(f"weight push ({self.backend}): rollout-{i} failed in {step}: "
                                      f"{describe_failure(e)}") from e
        return out

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        calls = []
        for i, h in enumerate(self.handles):
            info = dict(init_info)
            if "rank_offset" in info:  # group ranks: trainer 0, then each engine's tp workers in turn
                info["rank_offset"] = 1 + i * self.tp_size
            calls.append(h.init_weight_transfer_engine.remote(info))
        self._all("init_weight_transfer_engine", calls)

    def start_weight_update(self) -> list:
        """Each actor's answer (over shm: per worker, the tensors it need not load; else None)."""
        return self._all("start_weight_update", [h.start_weight_update.remote() for h in self.handles])

    def update_weights(self, update_info) -> None:
        self._all("update_weights", [h.update_weights.remote(update_info) for h in self.handles])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = weight_version if weight_version is not None else self.version
        self._all("finish_weight_update", [h.finish_weight_update.remote(version) for h in self.handles])

    def shutdown_weight_transfer_engine(self) -> None:
        self._all("shutdown_weight_transfer_engine",
                  [h.shutdown_weight_transfer_engine.remote() for h in self.handles])


def trainer_init_info(backend: str, *, rank: int, address: tuple[str, int] | None, world_size: int,
                      chunk_bytes: int, timeout_s: float):
    """vLLM's trainer init info for ``backend`` (``gloo`` and ``shm`` are ours, the others vLLM's)."""
    if backend == "gloo":
        host, port = address
        return transfer_engines.GlooTrainerInitInfo(host, port, world_size, chunk_bytes, timeout_s, rank=rank)
    if backend == "shm":
        return transfer_shm.ShmTrainerInitInfo(chunk_bytes, rank=rank)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        host, port = address
        return NCCLTrainerInitInfo(host, port, world_size, packed=True, packed_buffer_size_bytes=chunk_bytes,
                                   rank=rank)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(packed=True, packed_buffer_size_bytes=chunk_bytes, rank=rank)
    raise ValueError(f"no trainer-side engine for weight_sync.backend={backend}")


class TrainerTransfer:
    """One learner rank's trainer engine (rank 0 sends; others only take part in collectives)."""

    def __init__(self, module, backend: str, handles: list, *, rank: int, address, tp_size: int = 1,
                 dtype: torch.dtype | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 timeout_s: float = 600.0):
        self.backend = backend
        self.source = ExportedWeights(module, dtype)
        self.client = RolloutClient(handles, backend, tp_size=tp_size, timeout_s=timeout_s)
        world = 1 + len(handles) * tp_size
        info = trainer_init_info(backend, rank=rank, address=address, world_size=world, chunk_bytes=chunk_bytes,
                                 timeout_s=timeout_s)
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)
        if backend == "nccl" and rank == 0:
            _check_live(self.engine)

    def push(self, version: int, record: bool = True) -> dict:
        """``record=False``: this push will not be verified, so the engines skip their per-tensor stats
        (where an engine keeps them: shm)."""
        t0 = time.perf_counter()
        self.client.version = version
        if hasattr(self.engine, "record"):
            self.engine.record = record
        self.engine.send_weights()
        nbytes = sum(m.dtype.itemsize * torch.Size(m.shape).numel() for m in self.source.metadata())
        out = {"bytes": nbytes, "seconds": time.perf_counter() - t0, "parts": dict(getattr(self.engine, "timings", {}))}
        if hasattr(self.engine, "in_place"):
            out["in_place"] = self.engine.in_place
        return out

    def shutdown(self) -> None:
        self.engine.shutdown()


def _check_live(engine) -> None:
    # A PyNcclCommunicator that could not load NCCL, or sees a world of 1, disables itself and
    # every broadcast becomes a no-op: the engines would keep their old weights without a word.
    comm = getattr(engine, "model_update_group", None)
    if comm is None or getattr(comm, "disabled", False) or getattr(comm, "world_size", 0) < 2:
        raise WeightPushError(f"the NCCL weight group is not live (communicator {comm!r}, "
                              f"disabled={getattr(comm, 'disabled', None)}, world={getattr(comm, 'world_size', None)})")
