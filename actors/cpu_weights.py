"""vLLM's CPU linear layers with plain weights, so a push copies straight into them.

By default vLLM on CPU repacks every linear weight (and the LM head) into an opaque
oneDNN buffer after loading and empties the parameter. A weight push must then go
through vLLM's layer-wise reload: materialise each layer in fresh memory, load,
repack, copy back. On the ~60M model that is most of a push: fresh pages and the
repack cost about 15x a plain copy of the bytes (docs/performance.md).

With ``keep_plain(True)`` before the engine is built, those layers take the path
vLLM itself uses for layers it does not pack (``_cpu_skip_gemm_dispatch``):
``F.linear`` on the parameter as loaded. vLLM packs embeddings and the LM head whatever
the flag says; ``plain_heads`` points them at their parameter after the first push. Nothing
is then derived from a weight after loading, so ``loads_in_place`` holds and a push is
vLLM's own ``load_weights`` copying each tensor into its (fused, sharded) place: one
copy, no reload.
"""
from __future__ import annotations

import os

ENV = "MEDR1_CPU_LINEAR"  # "plain" or "packed": read by every vLLM worker process (actors/vllm_worker_ext.py)
PLAIN, PACKED = "plain", "packed"


def _classes():
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    # On embeddings (the LM head is one) vLLM does not read the flag; loads_in_place does.
    return LinearBase, VocabParallelEmbedding


def keep_plain(on: bool) -> None:
    """Before a model is built in this process: its CPU linear layers keep plain weights (``on``) or are
    packed for oneDNN (vLLM's default). A class attribute, so it reaches layers built later; the flag is
    the one vLLM checks per layer. Also set in the environment for worker processes spawned later."""
    os.environ[ENV] = PLAIN if on else PACKED
    for cls in _classes():
        if on:
            cls._cpu_skip_gemm_dispatch = True
        elif "_cpu_skip_gemm_dispatch" in cls.__dict__:
            del cls._cpu_skip_gemm_dispatch


def apply_env() -> None:
    """In a vLLM worker process: follow the engine's choice (``ENV``), if it made one."""
    mode = os.environ.get(ENV)
    if mode in (PLAIN, PACKED):
        keep_plain(mode == PLAIN)


def loads_in_place(model) -> bool:
    """Whether loading weights into ``model`` with its own ``load_weights`` is the whole update: on CPU,
    every layer with a weight-processing method is an unquantized linear or embedding that kept its
    plain weight. Anything else (quantized, packed, another device) needs vLLM's layer-wise reload."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        if not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)):
            return False
        weight = getattr(module, "weight", None)
        if not getattr(module, "_cpu_skip_gemm_dispatch", False) or weight is None or weight.numel() == 0:
            return False
    return True


def plain_heads(model) -> int:
    """Make the LM head (and embedding) multiply by their parameter; returns how many changed. vLLM packs
    them for oneDNN at load whatever ``_cpu_skip_gemm_dispatch`` says (only linear layers read it), and a
    tied head's packed copy would go stale when a push copies new weights into the parameter."""
    import torch
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    n = 0
    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod) and \
                getattr(module, "cpu_linear", None) is not None and not getattr(module, "_medr1_plain", False):
            module.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)
            module._medr1_plain = True
            n += 1
    return n
