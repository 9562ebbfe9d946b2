"""``medr1_shm``: the weight push through shared memory, on vLLM's weight-transfer API.

For one node (learner and engines on the same machine). At ``trainer_init`` learner
rank 0 lays the model out in a segment under ``/dev/shm`` (``actors/shm_segment.py``)
and every engine's workers map it in ``init_transfer_engine``; the name is then
unlinked, so nothing is left behind if a process dies. A push writes each tensor
into its place once (the cast to the engines' dtype happens in that copy) and calls
``update_weights`` once per bucket with only names, shapes and offsets; the worker
hands vLLM's own load path (``model.load_weights`` inside a layer-wise reload,
like the other engines) tensors that are views of the mapping. No pickling, no
serialisation, no message that grows with the model. While the engines load one
bucket, the learner writes the next. Where the engine's weights are plain, its
parameters become views of the segment after the first push (``actors/shm_alias.py``),
and a push is the learner's write alone.

The segment holds the whole model (each tensor keeps its place for the run), so a
load never reads bytes the learner is rewriting: vLLM's layer-wise reload keeps
references to a layer's weights until the layer is complete. Buckets are cut at
decoder-layer boundaries (vLLM's ``layerwise_groups``).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
    layerwise_groups,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.model_executor.layers.vocab_parallel_embedding import DEFAULT_VOCAB_PADDING_SIZE

from actors import shm_alias, shm_segment
from actors.transfer_engines import _layerwise_finish, _layerwise_start
from actors.weight_stream import DEFAULT_CHUNK_BYTES
from actors.weight_verify import tensor_stats

SHM = "medr1_shm"
log = logging.getLogger(__name__)


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    path: str
    nbytes: int
    host: str  # the learner's machine (shm_segment.host_id): an engine elsewhere refuses, naming both


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    """One bucket: where its tensors sit in the segment."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    offsets: list[int]
    record: bool = True  # keep per-tensor stats for weight_sync.verify (costs a pass over the bytes)


class ShmWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    """Worker side: load tensors that are views of the mapped segment, or compute from the segment itself.

    Where the engine's weights are plain tensors a load only copies into (``loads_in_place``), the
    first push after mapping a segment records where vLLM's loaders copy each byte, and each parameter
    that is exactly one stretch of the segment becomes a view of it (``actors/shm_alias.py``); later
    pushes load only the tensors that feed the others. A push is then the learner's write and nothing
    else, so no generate may run while an update is open (the rollout actor runs one call at a time)."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.segment: torch.Tensor | None = None
        self.received: dict[str, list[float]] = {}
        self.layerwise = False  # set by each start_weight_update
        self.aliases: shm_alias.AliasPlan | None = None  # None: not probed on this segment yet
        self.recorder: shm_alias.CopyRecorder | None = None  # set while a push probes where the bytes go
        self.slots: dict[str, tuple[int, int]] = {}

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        here = shm_segment.host_id()
        if init_info.host != here:
            raise RuntimeError(f"weight_sync.backend=shm needs the rollout engines on the learner's node: this "
                               f"engine runs on {here}, learner rank 0 on {init_info.host}; use object_store or "
                               "gloo across nodes")
        self.segment = shm_segment.open_segment(init_info.path, init_info.nbytes)
        self.aliases = None  # a new segment: probe again

    def start_weight_update(self) -> None:
        self.received = {}
        self.layerwise = _layerwise_start(self.model)
        if self.aliases is not None and (self.layerwise or not shm_alias.still_aliased(self.model, self.aliases,
                                                                                       self.segment)):
            self.aliases = None
        probe = self.aliases is None and not self.layerwise and os.environ.get(shm_alias.ALIAS_ENV, "1") != "0"
        self.recorder, self.slots = (shm_alias.CopyRecorder() if probe else None), {}

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # no accelerator sync: loads are synchronous

    def receive_weights(self, info: ShmUpdateInfo) -> None:
        if self.segment is None:
            raise RuntimeError(f"{SHM}: update before init_weight_transfer_engine")
        pairs = shm_segment.bucket_views(self.segment, info.names, info.dtype_names, info.shapes, info.offsets)
        if info.record:  # vLLM's CPU kernels repack linear weights out of sight: keep what arrived
            self.received.update((n, tensor_stats(t)) for n, t in pairs)
        skip = self.aliases.names if self.aliases is not None else frozenset()
        load = [(n, t) for n, t in pairs if n not in skip]  # the rest is already in place
        if self.recorder is not None:
            self.slots.update((n, (o, t.numel() * t.element_size())) for (n, t), o in zip(pairs, info.offsets))
            with self.recorder:
                self.model.load_weights(load)
        elif load:
            self.model.load_weights(load)  # the one copy: from the mapping into the engine's parameters

    def finish_weight_update(self) -> None:
        _layerwise_finish(self.model, self.model_config, self.layerwise)
        if self.recorder is not None:
            params = dict(self.model.named_parameters())
            plan = shm_alias.plan_aliases(params, self.recorder.copies, self.segment, self.slots)
            self.aliases = shm_alias.apply_aliases(self.model, plan, self.segment)
            mb = sum(params[n].numel() * params[n].element_size() for n in self.aliases.params) / 2**20
            log.info("%s: %d of %d parameters (%.1f MiB) now read the shared segment; later pushes skip loading "
                     "%d tensors", SHM, len(self.aliases.params), len(params), mb, len(self.aliases.names))
            self.recorder, self.slots = None, {}

    def skipped_names(self) -> list[str] | None:
        """After ``start_weight_update``: the tensors this push will not load (None: it loads every one)."""
        return None if self.recorder is not None or self.aliases is None else sorted(self.aliases.names)

    def shutdown(self) -> None:
        self.segment = None  # the mapping goes with the last view (aliased parameters keep theirs)


@dataclass
class ShmTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = SHM

    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # the bucket: bytes per load call on the engines


class ShmTrainerWeightTransferEngine(TrainerWeightTransferEngine[ShmTrainerInitInfo]):
    """Trainer side, on learner rank 0: write the weights into the segment, one load call per bucket."""

    init_info_cls = ShmTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.chunk_bytes = chunk_bytes
        self.layout: shm_segment.Layout | None = None
        self.segment: torch.Tensor | None = None
        self.record = True  # set per push by actors/transfer_client.py (only pushes that are verified)
        self.timings: dict[str, float] = {}
        self.in_place = 0  # tensors of the last push that no engine loaded (actors/shm_alias.py)

    @classmethod
    def trainer_init(cls, init_info: ShmTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError(f"{SHM} needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, chunk_bytes=init_info.chunk_bytes)
        if engine.is_sender:
            engine.layout = _layout(source, init_info.chunk_bytes)
            path, engine.segment = shm_segment.create_segment(engine.layout.nbytes)
            try:
                client.init_weight_transfer_engine(asdict(ShmInitInfo(path, engine.layout.nbytes,
                                                                      shm_segment.host_id())))
            finally:
                shm_segment.unlink(path)  # mapped by every engine (or failed): the name is no longer needed
        return engine

    def send_weights(self) -> None:
        if not self.is_sender:
            return
        layout, segment = self.layout, self.segment
        if sorted(_specs(self.source)) != sorted((s.name, s.dtype, s.shape) for s in layout.slots):
            raise RuntimeError(f"{SHM}: the learner's tensors changed since the segment was laid out")
        where = {s.name: i for i, s in enumerate(layout.slots)}
        bucket_of = {i: k for k, b in enumerate(layout.buckets) for i in b}
        left = [len(b) for b in layout.buckets]
        t0 = time.perf_counter()
        skip = _skipped_everywhere(self.client.start_weight_update())
        # A bucket whose every tensor each engine reads from the segment itself needs no call (unless this
        # push is verified: the engines then note what arrived).
        calls = [self.record or any(layout.slots[i].name not in skip for i in b) for b in layout.buckets]
        self.in_place = len(skip)
        # Overlap pays where loads are the work; when most tensors need none, the few loads wait for the
        # writes (an engine loading beside them slows the writes more than the overlap saves).
        overlap = not skip
        t1 = time.perf_counter()
        write = 0.0
        # One thread calls the engines, bucket after bucket, while this one writes the next bucket.
        with ThreadPoolExecutor(max_workers=1) as caller:
            pending, deferred, ready = [], [], 0
            try:
                for name, tensor in self.source:
                    i = where[name]
                    tw = time.perf_counter()
                    shm_segment.view(segment, layout.slots[i]).copy_(tensor)  # the learner's one copy
                    write += time.perf_counter() - tw
                    left[bucket_of[i]] -= 1
                    while ready < len(left) and left[ready] == 0:
                        if calls[ready]:
                            deferred.append(dict(layout.bucket_info(ready), record=self.record))
                            if overlap:
                                pending.append(caller.submit(self.client.update_weights, deferred.pop()))
                        ready += 1
                pending += [caller.submit(self.client.update_weights, info) for info in deferred]
            finally:
                t2 = time.perf_counter()
                for p in pending:
                    p.result()  # the first failure (naming the engine) is raised here
        t3 = time.perf_counter()
        self.client.finish_weight_update()
        # Where a push's time goes, on the learner's side (bench/bench_push.py prints it).
        self.timings = {"start": t1 - t0, "write": write, "walk": t2 - t1 - write, "last_loads": t3 - t2,
                        "finish": time.perf_counter() - t3}

    def shutdown(self) -> None:
        self.segment = None


def _skipped_everywhere(answers) -> frozenset[str]:
    """The tensors no engine worker needs loaded, from each rollout actor's ``start_weight_update``
    answer (a list per actor of one entry per worker: a list of names, or None for all of them)."""
    per_worker = [w for a in (answers or [None]) for w in (a if isinstance(a, list) else [a])]
    if not per_worker or any(w is None for w in per_worker):
        return frozenset()
    return frozenset.intersection(*(frozenset(w) for w in per_worker))


def _specs(source) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(m.name, str(m.dtype).removeprefix("torch."), tuple(int(d) for d in m.shape)) for m in source.metadata()]


def _layout(source, bucket_bytes: int) -> shm_segment.Layout:
    specs = _specs(source)
    # vLLM pads vocabulary rows (embeddings, LM heads) to a multiple of this and zero-fills the rest.
    vocab = {n: DEFAULT_VOCAB_PADDING_SIZE for n, _, _ in specs
             if n.endswith(("embed_tokens.weight", "lm_head.weight"))}
    return shm_segment.plan_layout(specs, layerwise_groups([s[0] for s in specs]), bucket_bytes, vocab)


def register() -> None:
    """Add ``medr1_shm`` to vLLM's registries (once per process)."""
    if SHM not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(SHM, ShmWeightTransferEngine)
    if SHM not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(SHM, ShmTrainerWeightTransferEngine)


register()
