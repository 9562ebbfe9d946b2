"""The weight push's pure parts, in milliseconds: bounded messages, packed chunks that both
ends cut alike, and the per-tensor check that survives vLLM's fusing, padding and sharding."""
from __future__ import annotations

import warnings

import pytest
import torch

from actors.weight_stream import StreamAssembler, TensorSpec, message_plan, spec_of, stream_messages
from actors.weight_verify import engine_stats, expected_stats, mismatches, tensor_stats


def _named(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [("a.weight", torch.randn(37, 11, generator=g)),
            ("b.bias", torch.randn(5, generator=g).to(torch.bfloat16)),
            ("empty", torch.zeros(0)),
            ("c.weight", torch.randint(0, 100, (3, 4, 5), generator=g, dtype=torch.int64)),
            ("d.weight", torch.randn(300, generator=g))]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1 << 20])
def test_stream_round_trip_with_bounded_messages(chunk):
    named = _named()
    asm = StreamAssembler()
    got = []
    for m in stream_messages(named, chunk):
        assert sum(len(data) for _, _, data in m["pieces"]) <= chunk
        got += asm.feed(m)
    assert asm.finish() == len(named)
    assert [n for n, _ in got] == [n for n, _ in named]
    for (_, want), (_, have) in zip(named, got):
        assert have.dtype == want.dtype and have.shape == want.shape and torch.equal(have, want)


def test_stream_refuses_a_missing_or_reordered_message():
    msgs = list(stream_messages(_named(), 64))
    asm = StreamAssembler()
    asm.feed(msgs[0])
    with pytest.raises(ValueError, match="out of order|incomplete"):
        asm.feed(msgs[2])
    asm = StreamAssembler()
    for m in msgs[:-1]:
        asm.feed(m)
    with pytest.raises(ValueError, match="ended after"):
        asm.finish()
    with pytest.raises(ValueError, match="before the one carrying"):
        StreamAssembler().feed(msgs[1])


def test_no_message_grows_with_a_2b_model():
    """Qwen2-VL-2B's real parameter shapes (built on the meta device): every message of an
    object-store push stays within the chunk size, though one tensor is 467 MB."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config={"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
        vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16},
        tie_word_embeddings=True, torch_dtype="bfloat16")
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16)
    specs = [spec_of(n, p) for n, p in model.named_parameters()]
    total = sum(s.nbytes for s in specs)
    assert 4.0e9 < total < 5.0e9  # ~2.2B parameters in bf16: past msgspec's 4 GiB limit for one bytes
    chunk = 256 << 20
    plan = message_plan(specs, chunk)
    sizes = [sum(b - a for _, a, b in m) for m in plan]
    assert max(sizes) <= chunk and sum(sizes) == total
    assert max(s.nbytes for s in specs) > chunk  # the embedding spans messages
    assert len(plan) == -(-total // chunk)


def test_receiver_chunks_match_vllm_pack_tensors():
    """The gloo receiver sizes its buffers with chunk_plan; the sender packs with vLLM's
    pack_tensors. Both must cut the stream at the same tensors."""
    pytest.importorskip("vllm")
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

    from actors.transfer_engines import chunk_plan

    g = torch.Generator().manual_seed(1)
    named = [(f"t{i}", torch.randn(int(n), generator=g)) for i, n in enumerate(torch.randint(1, 400, (60,), generator=g))]
    for limit in (1, 100, 1000, 5000, 10 ** 6):
        it = iter(named)
        packed = []
        with warnings.catch_warnings():  # "tensor larger than the buffer": expected at small limits
            warnings.simplefilter("ignore")
            while (c := pack_tensors(it, lambda item: item[1], limit)) is not None:
                packed.append(c.names)
        plan = chunk_plan([t.numel() * t.element_size() for _, t in named], limit)
        assert packed == [[f"t{i}" for i in chunk] for chunk in plan]


def test_verify_sums_fused_padded_and_sharded_parameters():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(8, 4, generator=g) for _ in range(3))
    emb = torch.randn(10, 4, generator=g)
    learner = {"q_proj.weight": tensor_stats(q), "k_proj.weight": tensor_stats(k), "v_proj.weight": tensor_stats(v),
               "embed.weight": tensor_stats(emb), "orphan.weight": tensor_stats(q)}
    mapping = {"q_proj.weight": "qkv_proj.weight", "k_proj.weight": "qkv_proj.weight",
               "v_proj.weight": "qkv_proj.weight", "embed.weight": "embed.weight", "orphan.weight": None}
    expected, sources, unmapped = expected_stats(learner, mapping)
    assert unmapped == ["orphan.weight"] and sources["qkv_proj.weight"] == ["q_proj.weight", "k_proj.weight",
                                                                            "v_proj.weight"]
    qkv = torch.cat([q, k, v])
    padded = torch.cat([emb, torch.zeros(6, 4)])  # vLLM pads the vocabulary with zeros
    # Two tensor-parallel workers: qkv split by rows, the embedding replicated.
    workers = [{"params": {"qkv_proj.weight": tensor_stats(part), "embed.weight": tensor_stats(padded)},
                "received": {}} for part in qkv.chunk(2)]
    assert mismatches(expected, engine_stats(workers, expected, sources), sources) == []
    # One value off in v: named, with the checkpoint tensors behind it.
    bad = qkv.clone()
    bad[-1, -1] += 1e-3
    workers[1]["params"]["qkv_proj.weight"] = tensor_stats(bad.chunk(2)[1])
    [line] = mismatches(expected, engine_stats(workers, expected, sources), sources)
    assert line.startswith("qkv_proj.weight (from q_proj.weight, k_proj.weight, v_proj.weight)")


def test_verify_reads_delivered_tensors_where_cpu_kernels_emptied_the_parameter():
    w = torch.randn(6, 3)
    expected, sources, _ = expected_stats({"w": tensor_stats(w)}, {"w": "w"})
    report = {"params": {"w": tensor_stats(torch.empty(0))}, "received": {"w": tensor_stats(w)}}
    assert mismatches(expected, engine_stats([report], expected, sources), sources) == []
    report["received"]["w"] = tensor_stats(w * 2)
    assert len(mismatches(expected, engine_stats([report], expected, sources), sources)) == 1


def test_weight_sync_factory():
    from actors.weight_sync import BroadcastWeightSync, ObjectStoreWeightSync, make_weight_sync

    assert isinstance(make_weight_sync("object_store"), ObjectStoreWeightSync)
    for backend in ("gloo", "nccl", "ipc", "shm"):
        sync = make_weight_sync(backend, bucket_size_mb=64)
        assert isinstance(sync, BroadcastWeightSync) and sync.backend == backend and sync.chunk_bytes == 64 << 20
    with pytest.raises(ValueError, match="object_store, shm, gloo, nccl or ipc"):
        make_weight_sync("carrier-pigeon")


def test_tensor_spec_bytes():
    assert TensorSpec("x", "bfloat16", (3, 5)).nbytes == 30
    assert spec_of("y", torch.zeros(2, 2, dtype=torch.float64)).nbytes == 32


def test_kernel_check_finds_a_packed_copy_the_push_left_behind():
    """The stale tied LM head of vLLM's CPU path, in small: the layer multiplies through a copy taken
    when it was set up, and the parameter is later updated in place (as a push does)."""
    from actors.weight_verify import stale_cpu_kernels

    def packed(layer: torch.nn.Module) -> None:
        copy = layer.weight.detach().clone()
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, copy, bias)

    model = torch.nn.Module()
    model.head, model.plain = torch.nn.Linear(8, 16, bias=False), torch.nn.Linear(8, 4, bias=False)
    packed(model.head)
    model.plain.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)
    assert stale_cpu_kernels(model) == []
    with torch.no_grad():
        model.head.weight.add_(0.01 * torch.randn_like(model.head.weight))
        model.plain.weight.mul_(3.0)
    assert stale_cpu_kernels(model) == ["head"]
    packed(model.head)  # what refresh_tied_heads does: repack from the parameter
    assert stale_cpu_kernels(model) == []


def test_a_lost_rollout_keeps_its_slot_through_ray_wrappers():
    """A learner actor raises ``RolloutLostError``; the driver gets it wrapped by Ray and must still find
    which slot of the push's group was lost (to push to the others without it)."""
    import pickle

    from ray.exceptions import RayTaskError

    from actors.weight_sync import (NotInWeightGroupError, RolloutLostError, WeightPushError, lost_rollout,
                                    root_of)

    try:
        try:
            raise NotInWeightGroupError("was restarted since the weight group was formed")
        except NotInWeightGroupError as inner:
            raise RolloutLostError("weight push (shm): rollout-2 was lost in start_weight_update", 2) from inner
    except RolloutLostError as e:
        lost = e
    copied = pickle.loads(pickle.dumps(lost))  # how it leaves the learner actor
    assert isinstance(copied, WeightPushError) and copied.rollout == 2 and "rollout-2" in str(copied)
    wrapped = RayTaskError("LearnerWorker.push_weights", "Traceback ...", copied).as_instanceof_cause()
    assert isinstance(wrapped, RolloutLostError)  # Ray's wrapper passes for its cause's type ...
    found = lost_rollout(wrapped)
    assert found is copied and found.rollout == 2  # ... the slot comes from the cause itself
    assert root_of(lost, NotInWeightGroupError) is lost.__cause__
    assert lost_rollout(RayTaskError("f", "tb", ValueError("other")).as_instanceof_cause()) is None
    assert lost_rollout(WeightPushError("a timeout")) is None
