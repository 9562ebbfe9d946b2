"""When a push may skip vLLM's layer-wise reload (actors/cpu_weights.py): only where every layer with
a weight-processing method kept a plain weight. The end-to-end check (the engine serves what was
pushed, both ways) is tests/test_weight_push.py."""
from __future__ import annotations

import os

import pytest
import torch

from actors import cpu_weights


@pytest.fixture
def vllm_layers():
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        UnquantizedEmbeddingMethod,
        VocabParallelEmbedding,
    )

    before = os.environ.get(cpu_weights.ENV)
    yield LinearBase, VocabParallelEmbedding, UnquantizedLinearMethod, UnquantizedEmbeddingMethod
    cpu_weights.keep_plain(False)  # vLLM's default again for whatever runs next in this process
    if before is None:
        os.environ.pop(cpu_weights.ENV, None)
    else:
        os.environ[cpu_weights.ENV] = before


def _layer(method, *, flag: bool, rows: int = 4) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.quant_method = method
    layer.weight = torch.nn.Parameter(torch.zeros(rows, 3), requires_grad=False)
    if flag:
        layer._cpu_skip_gemm_dispatch = True
    return layer


def test_keep_plain_sets_the_flag_vllm_reads_and_takes_it_back(vllm_layers):
    linear_cls, embed_cls, *_ = vllm_layers
    cpu_weights.keep_plain(True)
    assert linear_cls._cpu_skip_gemm_dispatch is True and embed_cls._cpu_skip_gemm_dispatch is True
    assert os.environ[cpu_weights.ENV] == cpu_weights.PLAIN  # what a worker process spawned later reads
    cpu_weights.keep_plain(False)
    assert "_cpu_skip_gemm_dispatch" not in linear_cls.__dict__ and "_cpu_skip_gemm_dispatch" not in embed_cls.__dict__
    os.environ[cpu_weights.ENV] = cpu_weights.PLAIN
    cpu_weights.apply_env()
    assert linear_cls._cpu_skip_gemm_dispatch is True


def test_loads_in_place_only_when_every_processed_layer_is_plain(vllm_layers):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("on accelerators every push keeps vLLM's layer-wise reload")
    *_, linear_method, embed_method = vllm_layers
    model = torch.nn.Module()
    model.embed = _layer(embed_method(), flag=True)
    model.qkv = _layer(linear_method(), flag=True)
    model.norm = torch.nn.LayerNorm(3)  # no weight processing: loading is all there is
    assert cpu_weights.loads_in_place(model)

    model.qkv.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # packed away by oneDNN
    assert not cpu_weights.loads_in_place(model)
    model.qkv = _layer(linear_method(), flag=False)  # built before keep_plain: vLLM packs it
    assert not cpu_weights.loads_in_place(model)
    model.qkv = _layer(linear_method(), flag=True)
    model.quantized = _layer(object(), flag=True)  # any other method may derive state from the weight
    assert not cpu_weights.loads_in_place(model)
