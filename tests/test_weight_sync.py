"""The parts of the GPU (NCCL) weight push that run without a GPU: bucketing and names."""
from __future__ import annotations

import pytest


def test_nccl_buckets_cover_checkpoint_names_within_size(tiny_model_dir):
    from safetensors import safe_open
    from transformers import Qwen2VLForConditionalGeneration

    from actors.weight_sync import NCCLWeightSender

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    limit = 1 << 20
    buckets = NCCLWeightSender.bucket_specs(model, limit)
    names = [n for b in buckets for n, _, _ in b]
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        saved = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert sorted(names) == sorted(saved), "broadcast names must be the checkpoint (vLLM) names"
    assert len(names) == len(set(names))
    for b in buckets:
        sizes = [4 * max(1, _numel(shape)) for _, dtype, shape in b]
        assert all(dtype == "float32" for _, dtype, _ in b)
        assert len(b) == 1 or sum(sizes) <= limit, "a bucket over the limit must be a single large tensor"
    for name, _, shape in (s for b in buckets for s in b):
        assert list(saved[name]) == shape


def test_weight_sync_factory_and_config_guard():
    from actors.weight_sync import NCCLWeightSync, ObjectStoreWeightSync, make_weight_sync
    from pipelines.config import ConfigError, load_config

    assert isinstance(make_weight_sync("object_store"), ObjectStoreWeightSync)
    assert isinstance(make_weight_sync("nccl", 64), NCCLWeightSync)
    with pytest.raises(ValueError, match="object_store or nccl"):
        make_weight_sync("carrier-pigeon")
    with pytest.raises(ConfigError, match="zero_stage <= 2"):
        load_config("medr1_qwen2vl_2b.yaml", ["learner.zero_stage=3"])


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
