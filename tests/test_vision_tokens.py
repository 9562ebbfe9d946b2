"""vLLM never samples a vision special token (inside a completion it would read as an image
placeholder and fail the learner's forward). A policy made uniform over the vocabulary
(final norm weight 0: every logit 0) samples them now and then; with the ban it never does."""
from __future__ import annotations

import pytest
import ray
from safetensors.torch import load_file
from transformers import AutoTokenizer

from learner.policy import vision_token_ids
from pipelines.prompts import chat_prompt
from tests.conftest import noise_png

pytestmark = pytest.mark.slow


def test_vision_tokens_are_never_sampled(rollout_worker, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    banned = set(vision_token_ids(tok))
    assert len(banned) == 5
    prompt = chat_prompt(tok, {"question": "What modality is shown?", "options": ["CT", "MRI", "X-ray", "OCT"]})
    prompts = [{"id": f"p{i}", "prompt": prompt, "image": noise_png(i), "seed": i} for i in range(2)]
    sampling = dict(n=16, temperature=1.0, max_tokens=64, seed=0)  # 2048 tokens: ~5 vision tokens expected

    def vision_tokens(**extra) -> int:
        out = ray.get(rollout_worker.generate.remote(prompts, {**sampling, **extra}))
        return sum(t in banned for r in out["results"] for c in r["completions"] for t in c["token_ids"])

    original = load_file(str(tiny_model_dir / "model.safetensors"))
    version = ray.get(rollout_worker.get_weight_version.remote())
    uniform = {**original, "model.norm.weight": original["model.norm.weight"] * 0}
    ray.get(rollout_worker.load_weights.remote(uniform, version))
    try:
        assert vision_tokens(ban_vision_tokens=False) > 0  # the test can fail: this policy does sample them
        assert vision_tokens() == 0
    finally:  # the session's rollout actor goes back to the tiny model for the tests after this one
        ray.get(rollout_worker.load_weights.remote(original, version))
