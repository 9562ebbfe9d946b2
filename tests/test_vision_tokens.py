"""vLLM never samples a vision special token (inside a completion it would read as an image
placeholder and fail the learner's forward). Near-uniform sampling from the tiny model
shows the ban at work: without it the same seeded requests do sample them."""
from __future__ import annotations

import pytest
import ray
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
    # Temperature 50: close to uniform over the ~2k-token vocabulary, ~5 vision tokens expected per 2k samples.
    sampling = dict(n=16, temperature=50.0, max_tokens=64, seed=0)

    def vision_tokens(**extra) -> int:
        out = ray.get(rollout_worker.generate.remote(prompts, {**sampling, **extra}))
        return sum(t in banned for r in out["results"] for c in r["completions"] for t in c["token_ids"])

    assert vision_tokens(ban_vision_tokens=False) > 0  # the test can fail: the policy does sample them
    assert vision_tokens() == 0
