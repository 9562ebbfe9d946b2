"""The shared-memory weight push (``medr1_shm``), fast: the layout, and the trainer engine's
protocol against a second process that maps the segment the way a vLLM worker does.

The trainer half is the real ``ShmTrainerWeightTransferEngine`` built through vLLM's
trainer factory over vLLM's ``ModuleSource``; the other process reads each bucket with
the worker engine's own ``shm_segment.bucket_views`` (views of its mapping). What vLLM's load path
then does with those tensors runs on real engines in the slow runs (the smoke run
pushes over shm by default and verifies the first push).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from actors import shm_segment
from actors.shm_segment import ALIGN, plan_layout


def test_layout_aligns_every_tensor_and_never_splits_a_layer():
    specs = [("embed", "float32", (3, 5)), ("layers.0.a", "bfloat16", (7,)), ("layers.0.b", "float32", (4, 4)),
             ("layers.1.a", "float32", (100,)), ("norm", "float16", (3,))]
    groups = [["embed"], ["layers.0.a", "layers.0.b"], ["layers.1.a"], ["norm"]]
    layout = plan_layout(specs, groups, bucket_bytes=100)
    # 60 B -> 64; 14 B -> 64; 64 B; 400 B -> 448; 6 B -> 64: offsets by hand.
    assert [s.offset for s in layout.slots] == [0, 64, 128, 192, 640]
    assert layout.nbytes == 704 and all(s.offset % ALIGN == 0 for s in layout.slots)
    # embed (60) + layer 0 (78) > 100: layer 0 starts a bucket; layer 1 (400) is a bucket of its own.
    assert layout.buckets == [[0], [1, 2], [3], [4]]
    assert layout.bucket_info(1) == {"names": ["layers.0.a", "layers.0.b"], "dtype_names": ["bfloat16", "float32"],
                                     "shapes": [[7], [4, 4]], "offsets": [64, 128]}
    assert plan_layout(specs, groups, bucket_bytes=1 << 20).buckets == [[0, 1, 2, 3, 4]]


def test_layout_refuses_groups_that_leave_a_tensor_out():
    with pytest.raises(ValueError, match="exactly once"):
        plan_layout([("a", "float32", (2,)), ("b", "float32", (2,))], [["a"]], 64)
    with pytest.raises(ValueError, match="positive"):
        plan_layout([("a", "float32", (2,))], [["a"]], 0)


def _worker(conn) -> None:
    """A worker's half in its own process: map the segment, then answer each bucket with what it reads
    (through the views the worker engine hands vLLM: ``shm_segment.bucket_views``)."""
    segment = None
    while True:
        cmd, payload = conn.recv()
        if cmd == "init":
            segment = shm_segment.open_segment(payload["path"], payload["nbytes"])
            conn.send(None)
        elif cmd == "update":
            pairs = shm_segment.bucket_views(segment, payload["names"], payload["dtype_names"], payload["shapes"],
                                             payload["offsets"])
            base = segment.data_ptr()
            inside = all(base <= t.data_ptr() < base + segment.numel() for _, t in pairs)  # views, not copies
            conn.send(({n: t.clone() for n, t in pairs}, inside))
        else:
            conn.send(None)
            return


class _ProcessClient:
    """vLLM's weight-sync client calls, forwarded to the worker process (one engine)."""

    def __init__(self, conn):
        self.conn, self.calls, self.received, self.init = conn, [], {}, None
        self.skips = [None]  # per actor, what start_weight_update answers (None: every tensor is loaded)

    def _ask(self, cmd, payload=None):
        self.conn.send((cmd, payload))
        return self.conn.recv()

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.init = dict(init_info)
        assert init_info["host"] == shm_segment.host_id()
        self._ask("init", init_info)

    def start_weight_update(self) -> list:
        self.calls.append("start")
        return self.skips

    def update_weights(self, update_info: dict) -> None:
        self.calls.append(("update", update_info["record"], len(update_info["names"])))
        tensors, inside = self._ask("update", update_info)
        assert inside, "the worker's tensors are not views of the mapped segment"
        self.received.update(tensors)

    def finish_weight_update(self, weight_version=None) -> None:
        self.calls.append("finish")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
        self.norm = torch.nn.LayerNorm(16)


def test_push_over_shm_reaches_another_process_bucket_by_bucket():
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from actors.transfer_shm import ShmTrainerInitInfo

    torch.manual_seed(0)
    module = _Tiny()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child,), daemon=True)
    proc.start()
    try:
        client = _ProcessClient(parent)
        layer_bytes = (16 * 16 + 16) * 4  # one Linear's weight and bias
        engine = WeightTransferTrainerFactory.trainer_init(ShmTrainerInitInfo(layer_bytes, rank=0), client=client,
                                                           source=ModuleSource(module))
        assert not Path(client.init["path"]).exists(), "the segment's name outlived the handshake"
        engine.send_weights()
        # embed | layer 0 | layer 1 | layer 2 | norm: one load call per bucket, between start and finish.
        assert client.calls == ["start", ("update", True, 1), ("update", True, 2), ("update", True, 2),
                                ("update", True, 2), ("update", True, 2), "finish"]
        expected = dict(module.named_parameters())
        assert set(client.received) == set(expected)
        for name, p in expected.items():
            assert torch.equal(client.received[name], p.detach()), name

        # The next push reuses the mapping: new values arrive, and an unverified push skips the stats.
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(-2.0)
        client.calls, client.received, engine.record = [], {}, False
        engine.send_weights()
        assert {c[1] for c in client.calls if isinstance(c, tuple)} == {False}
        for name, p in module.named_parameters():
            assert torch.equal(client.received[name], p.detach()), name

        # Engines reading some tensors from the segment itself (actors/shm_alias.py) get no call for a bucket
        # that holds only those, unless the push is verified; one actor loading everything gets every bucket.
        client.skips = [[["embed.weight", "layers.0.weight", "layers.0.bias"]], [["embed.weight", "layers.0.weight",
                                                                                  "layers.0.bias", "norm.bias"]]]
        client.calls = []
        engine.send_weights()
        assert client.calls == ["start", ("update", False, 2), ("update", False, 2), ("update", False, 2), "finish"]
        client.calls, engine.record = [], True
        engine.send_weights()
        assert len(client.calls) == 7
        client.skips, client.calls, engine.record = [[["embed.weight"]], [None]], [], False
        engine.send_weights()
        assert len(client.calls) == 7

        with torch.no_grad():  # a tensor that changed shape no longer fits the layout
            module.norm.weight = torch.nn.Parameter(torch.ones(17))
        with pytest.raises(RuntimeError, match="changed since the segment was laid out"):
            engine.send_weights()
    finally:
        parent.send(("stop", None))
        proc.join(30)


def test_engine_on_another_machine_or_without_the_segment_is_refused_by_name():
    from actors.transfer_shm import ShmInitInfo, ShmWeightTransferEngine

    engine = ShmWeightTransferEngine.__new__(ShmWeightTransferEngine)  # the worker half needs no model to refuse
    with pytest.raises(RuntimeError, match=r"learner's node: this engine runs on .* learner rank 0 on node-b/1"):
        engine.init_transfer_engine(ShmInitInfo("/dev/shm/x", 64, "node-b/1"))
    missing = f"/dev/shm/medr1-weights-missing-{os.getpid()}"
    with pytest.raises(FileNotFoundError, match="do not share /dev/shm"):
        engine.init_transfer_engine(ShmInitInfo(missing, 64, shm_segment.host_id()))


def test_segment_is_reserved_up_front_and_mapped_shared(tmp_path):
    path, seg = shm_segment.create_segment(4096, directory=tmp_path)
    assert os.stat(path).st_blocks * 512 >= 4096  # allocated now, not at the first write
    other = shm_segment.open_segment(path, 4096)
    shm_segment.unlink(path)
    seg[10:20] = 7
    assert int(other[10:20].sum()) == 70 and not Path(path).exists()
    with pytest.raises(ValueError, match="holds 4096 bytes"):
        p2, _ = shm_segment.create_segment(4096, directory=tmp_path)
        shm_segment.open_segment(p2, 8192)
