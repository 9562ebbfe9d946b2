"""The project's two weight-transfer engines, registered into vLLM's own factories.

vLLM 0.32 moves trainer weights into a running engine through
``vllm.distributed.weight_transfer``: a worker-side ``WeightTransferEngine``
chosen by ``LLM(weight_transfer_config={"backend": ...})`` and driven by
``init_weight_transfer_engine / start_weight_update / update_weights /
finish_weight_update``, and a trainer-side ``TrainerWeightTransferEngine`` that
drives that handshake through a client. It ships ``nccl`` (GPUs, disaggregated)
and ``ipc`` (CUDA IPC, colocated). What it lacks, we add here, on the same
lifecycle (layer-wise reload between start and finish):

- ``medr1_gloo``: the NCCL engine's broadcast protocol over a gloo process group,
  in packed chunks. CPU clusters use it, and it is the path CI runs, so the
  sender/receiver protocol of the GPU path is exercised on every commit.
- ``medr1_stream``: the object-store fallback. The weights come to the rollout
  actor through Ray's object store and enter the engine as a stream of messages
  of bounded size (``actors/weight_stream.py``), never one message the size of
  the model.

The third, ``medr1_shm`` (one node, through a ``/dev/shm`` segment), is in
``actors/transfer_shm.py``.

``register()`` is idempotent; it runs on import of this module, which every vLLM
worker does through the worker extension (``actors/vllm_worker_ext.py``).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

from actors.cpu_weights import loads_in_place, plain_heads
from actors.weight_stream import DEFAULT_CHUNK_BYTES, StreamAssembler
from actors.weight_verify import tensor_stats

GLOO = "medr1_gloo"
STREAM = "medr1_stream"


def chunk_plan(nbytes: list[int], chunk_bytes: int) -> list[list[int]]:
    """Tensor indices per packed chunk, cut the way vLLM's ``pack_tensors`` cuts: a
    chunk closes right after the tensor that takes it past ``chunk_bytes``. The
    receiver sizes its buffers from this; the sender packs with ``pack_tensors``."""
    chunks, current, total = [], [], 0
    for i, n in enumerate(nbytes):
        current.append(i)
        total += n
        if total > chunk_bytes:
            chunks.append(current)
            current, total = [], 0
    if current:
        chunks.append(current)
    return chunks


def _gloo_group(host: str, port: int, rank: int, world_size: int, timeout_s: float):
    # A stateless group: the vLLM worker's own torch.distributed world stays untouched.
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(
        host, port, rank, world_size, backend="gloo", timeout=timedelta(seconds=timeout_s))


def _destroy(group) -> None:
    """Shut a stateless gloo group down (both ends do, before a group is re-formed)."""
    if group is not None:
        from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

        stateless_destroy_torch_distributed_process_group(group)


def _broadcast(group, tensor: torch.Tensor) -> None:
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()  # raises once the group's timeout passes (a dead peer)


@contextmanager
def _beside(fn, *args) -> Iterator[Future]:
    """Run ``fn(*args)`` on a thread while the body runs (both ends of a collective must be in it)."""
    exe = ThreadPoolExecutor(max_workers=1)
    future = exe.submit(fn, *args)
    try:
        yield future
    except BaseException as e:
        if future.done() and future.exception() is not None:
            raise future.exception() from e  # the other end failed first: that is the cause to name
        raise
    finally:
        # Never join here: after a failed broadcast the other end may sit in its collective until the
        # group's timeout; the error must reach the caller now, not then.
        exe.shutdown(wait=False)


class _Recording:
    """Per-tensor stats of what a push delivered. vLLM's CPU kernels repack linear weights into
    opaque buffers (the parameter is left empty), so on CPU this is what a check can read."""

    received: dict[str, list[float]]

    def _load(self, model, pairs: list[tuple[str, torch.Tensor]]) -> None:
        for name, t in pairs:
            self.received[name] = tensor_stats(t)
        model.load_weights(pairs)


def _layerwise_start(model) -> bool:
    """Begin an update. Returns whether it goes through vLLM's layer-wise reload: not where every
    weight is a plain tensor its loader copies into (actors/cpu_weights.py), since then loading is
    the whole update."""
    if loads_in_place(model):
        return False
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    initialize_layerwise_reload(model)
    return True


def _layerwise_finish(model, model_config, layerwise: bool) -> None:
    if not layerwise:
        plain_heads(model)  # loaded in place: the head must read its parameter, not a copy packed at load
        return
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    finalize_layerwise_reload(model, model_config)
    refresh_tied_heads(model)


def refresh_tied_heads(model) -> int:
    """Repack an LM head tied to the input embedding; returns how many were. On CPU vLLM packs the head's
    weight for oneDNN once at load. A push loads the tied weight through the embedding only, so the
    layer-wise reload re-processes the embedding and puts the head's old tensors back: the parameter
    is updated in place, the packed copy the sampler multiplies with is not (every logit would come
    from the first weights). Elsewhere the head multiplies the parameter itself and this is a no-op."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

    shared = Counter(m.weight.data_ptr() for m in model.modules()
                     if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.numel() > 0)
    tied = [m for m in model.modules() if isinstance(m, ParallelLMHead)
            and isinstance(m.quant_method, UnquantizedEmbeddingMethod)
            and m.weight.numel() > 0 and shared[m.weight.data_ptr()] > 1]
    for m in tied:  # only the head: the reload has already processed the embedding it shares a weight with
        m.quant_method.process_weights_after_loading(m)
    return len(tied)


# ---------------------------------------------------------------- gloo ----
@dataclass(kw_only=True)
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout_s: float = 600.0


@dataclass
class TensorListUpdateInfo(WeightTransferUpdateInfo):
    """Per-push metadata, in send order (the same fields as vLLM's NCCL update info)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


class GlooWeightTransferEngine(_Recording, WeightTransferEngine[GlooInitInfo, TensorListUpdateInfo]):
    """Worker side: receive packed chunks broadcast from trainer rank 0 over gloo."""

    init_info_cls = GlooInitInfo
    update_info_cls = TensorListUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self.chunk_bytes = DEFAULT_CHUNK_BYTES
        self.received = {}
        self.layerwise = False  # set by each start_weight_update

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config  # the same rank rule as vLLM's NCCL engine: unique across DP replicas
        rank = pc.data_parallel_index * pc.world_size + pc.rank + init_info.rank_offset
        self.chunk_bytes = init_info.chunk_bytes
        self.group = _gloo_group(init_info.master_address, init_info.master_port, rank,
                                 init_info.world_size, init_info.timeout_s)

    def start_weight_update(self) -> None:
        self.received = {}
        self.layerwise = _layerwise_start(self.model)

    def finish_weight_update(self) -> None:
        _layerwise_finish(self.model, self.model_config, self.layerwise)

    def update_weights(self, update_info: dict) -> None:
        # The base class ends with torch.accelerator.synchronize(), which has no CPU meaning.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, info: TensorListUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError(f"{GLOO}: update before init_weight_transfer_engine")
        dtypes = [getattr(torch, d) for d in info.dtype_names]
        sizes = [torch.Size(s).numel() * dt.itemsize for s, dt in zip(info.shapes, dtypes)]
        for chunk in chunk_plan(sizes, self.chunk_bytes):
            buf = torch.empty(sum(sizes[i] for i in chunk), dtype=torch.uint8, device=self.device)
            _broadcast(self.group, buf)
            self._load(self.model, unpack_tensor(buf, [info.names[i] for i in chunk],
                                                  [info.shapes[i] for i in chunk], [dtypes[i] for i in chunk],
                                                  [sizes[i] for i in chunk]))

    def shutdown(self) -> None:
        self.group = _destroy(self.group)


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = GLOO

    master_address: str
    master_port: int
    world_size: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout_s: float = 600.0


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side, on learner rank 0 (rank 0 of the group; workers follow from 1).

    The same round trip as vLLM's NCCL trainer engine: start, the workers'
    ``update_weights`` running while rank 0 broadcasts, finish."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.chunk_bytes = chunk_bytes
        self.group = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError(f"{GLOO} needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender,
                     chunk_bytes=init_info.chunk_bytes)
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(master_address=init_info.master_address, master_port=init_info.master_port,
                                   rank_offset=1, world_size=init_info.world_size,
                                   chunk_bytes=init_info.chunk_bytes, timeout_s=init_info.timeout_s)
        # Workers block in the rendezvous inside init_weight_transfer_engine: run it beside ours.
        with _beside(client.init_weight_transfer_engine, asdict(worker_info)) as pending:
            engine.group = _gloo_group(init_info.master_address, init_info.master_port, 0,
                                       init_info.world_size, init_info.timeout_s)
            pending.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        if not self.is_sender:
            return
        info = TensorListUpdateInfo(names=[m.name for m in meta],
                                    dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
                                    shapes=[list(m.shape) for m in meta])
        self.client.start_weight_update()
        with _beside(self.client.update_weights, asdict(info)) as pending:
            time.sleep(0.05)
            if pending.done():  # refused before any broadcast (a bad request, an actor gone): say so now
                pending.result()
            pairs = iter(self.source)
            while (chunk := pack_tensors(pairs, lambda item: item[1].detach().cpu(), self.chunk_bytes)) is not None:
                _broadcast(self.group, chunk.packed_tensor)
            pending.result()
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = _destroy(self.group)


# -------------------------------------------------------------- stream ----
@dataclass
class StreamInitInfo(WeightTransferInitInfo):
    pass


@dataclass
class StreamUpdateInfo(WeightTransferUpdateInfo):
    """One message of ``actors/weight_stream.py``: ``pieces`` and, first, ``specs``."""

    pieces: list = field(default_factory=list)
    specs: list | None = None


class StreamWeightTransferEngine(_Recording, WeightTransferEngine[StreamInitInfo, StreamUpdateInfo]):
    """Worker side of the object-store push: each message is at most one chunk."""

    init_info_cls = StreamInitInfo
    update_info_cls = StreamUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.assembler = StreamAssembler()
        self.received = {}
        self.layerwise = False  # set by each start_weight_update

    def init_transfer_engine(self, init_info: StreamInitInfo) -> None:
        pass  # nothing to rendezvous: the messages come through collective_rpc

    def start_weight_update(self) -> None:
        self.assembler = StreamAssembler()
        self.received = {}
        self.layerwise = _layerwise_start(self.model)

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, info: StreamUpdateInfo) -> None:
        message = {"pieces": info.pieces} if info.specs is None else {"pieces": info.pieces, "specs": info.specs}
        done = self.assembler.feed(message)
        if done:
            self._load(self.model, [(n, t.to(self.device)) for n, t in done])

    def finish_weight_update(self) -> None:
        self.assembler.finish()
        _layerwise_finish(self.model, self.model_config, self.layerwise)

    def shutdown(self) -> None:
        pass


def register() -> None:
    """Add the project's engines to vLLM's registries (once per process)."""
    if GLOO not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)
    if STREAM not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(STREAM, StreamWeightTransferEngine)
    if GLOO not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO, GlooTrainerWeightTransferEngine)


register()
