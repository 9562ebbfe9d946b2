"""A push into a vLLM engine running in its own process, as on GPUs
(VLLM_ENABLE_V1_MULTIPROCESSING=1): every message crosses the process boundary through
msgspec, in chunks far smaller than the model, and the weight version travels with it."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO, TEST_MAX_PIXELS, noise_png

pytestmark = pytest.mark.slow


def test_object_store_push_into_a_multiprocess_engine(ray_session, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from actors.weight_verify import engine_stats, expected_stats, mismatches, tensor_stats
    from cluster.ray_utils import kill_quietly
    from pipelines.prompts import chat_prompt

    ray = ray_session
    env = {**cpu_engine_env("0-1"), "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "PYTHONPATH": str(REPO)}
    kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                  max_pixels=TEST_MAX_PIXELS, seed=0)
    [w] = create_rollout_workers(1, kwargs, num_cpus=1, env_vars=[env], name_prefix="mp-rollout")
    try:
        wait_ready([w], timeout=900)
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        probe = {"id": "probe", "prompt": chat_prompt(tok, {"question": "Which organ?", "options": ["A1", "B2"]}),
                 "image": noise_png(3)}

        def greedy():
            out = ray.get(w.generate.remote([probe], {"n": 1, "temperature": 0.0, "max_tokens": 8}))
            return out["results"][0]["completions"][0]["token_ids"], out["weight_version"]

        before, v0 = greedy()
        assert v0 == 0
        g = torch.Generator().manual_seed(0)
        new = {k: t + 0.05 * torch.randn(t.shape, generator=g) for k, t in
               load_file(str(tiny_model_dir / "model.safetensors")).items()}
        chunk = 256 << 10  # 256 KiB: the 16 MB model crosses in many messages
        stats = ray.get(w.load_weights.remote(new, 7, chunk))
        assert stats["version"] == 7 and stats["bytes"] > 40 * chunk
        after, v1 = greedy()
        assert v1 == 7 and after != before

        names = ray.get(w.param_names.remote(sorted(new)))
        expected, sources, unmapped = expected_stats({k: tensor_stats(t) for k, t in new.items()}, names)
        assert not unmapped
        assert mismatches(expected, engine_stats(ray.get(w.weight_stats.remote()), expected, sources), sources) == []
    finally:
        kill_quietly([w])
