"""Qwen2.5-VL and Qwen3-VL end to end (Qwen2-VL is what every other slow test runs): the tiny
replica of each gives the same greedy tokens and log-probs in vLLM CPU as in transformers for the
same image prompt, and `medr1 train configs/smoke.yaml model.path=<replica>` trains, pushes and
verifies every push, and evaluates before and after (no format warm-start: the SFT path is the
learner's, tested on Qwen2-VL, and each would cost a learner start-up per family)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from learner.image_codec import decode_image
from tests.conftest import REPO, TEST_MAX_PIXELS, noise_png, tiny_dims

pytestmark = pytest.mark.slow

NEW_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
MAX_NEW = 8


def _hf_greedy(model_dir, prompt: str, png: bytes):
    """transformers' greedy tokens for the prompt and the log-prob of each under the model."""
    from learner.policy import load_policy, load_processor

    proc, model = load_processor(str(model_dir)), load_policy(str(model_dir)).eval()
    enc = proc(text=[prompt], images=[decode_image(png)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)[0, enc["input_ids"].shape[1]:]
        full = dict(enc, input_ids=torch.cat([enc["input_ids"], out[None]], 1),
                    attention_mask=torch.ones(1, enc["input_ids"].shape[1] + len(out), dtype=torch.long),
                    mm_token_type_ids=torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(out), dtype=torch.long)], 1))
        P = enc["input_ids"].shape[1]
        logits = model(**full).logits[0, P - 1:P - 1 + len(out)].float()
    logp = torch.log_softmax(logits, -1).gather(-1, out[:, None]).squeeze(-1)
    return enc["input_ids"][0].tolist(), out.tolist(), logp.tolist()


def _vllm_greedy(ray, model_dir, prompt: str, png: bytes):
    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env

    kwargs = dict(model_path=str(model_dir), max_model_len=1024, kv_cache_memory_bytes=128 << 20,
                  max_pixels=TEST_MAX_PIXELS, seed=0)
    env = {**cpu_engine_env(f"0-{(os.cpu_count() or 2) - 1}"), "PYTHONPATH": str(REPO)}
    [worker] = create_rollout_workers(1, kwargs, num_cpus=1, env_vars=[env], name_prefix=f"fam-{model_dir.name}")
    try:
        wait_ready([worker])
        out = ray.get(worker.generate.remote([{"id": "q", "prompt": prompt, "image": png}],
                                             {"n": 1, "temperature": 0.0, "max_tokens": MAX_NEW}))
    finally:
        ray.kill(worker)  # the training run below starts its own actors
    [r] = out["results"]
    assert r["error"] is None, r["error"]
    return r["prompt_token_ids"], r["completions"][0]["token_ids"], r["completions"][0]["logprobs"]


def test_new_families_generate_like_transformers_and_train(tmp_path, ray_session):
    from transformers import AutoTokenizer

    from pipelines.config import load_config
    from pipelines.models.tiny import build_tiny_model
    from pipelines.prompts import chat_prompt
    from pipelines.training.grpo_loop import run_training

    record = {"question": "What imaging modality is shown?", "options": ["CT", "MRI", "X-ray", "OCT"]}
    for family in NEW_FAMILIES:
        root = tmp_path / family
        model_dir = build_tiny_model(root / "model", tiny_dims(), max_pixels=TEST_MAX_PIXELS, family=family)
        prompt = chat_prompt(AutoTokenizer.from_pretrained(model_dir), record, "think")
        png = noise_png(1)
        hf_prompt, hf_ids, hf_logp = _hf_greedy(model_dir, prompt, png)
        v_prompt, v_ids, v_logp = _vllm_greedy(ray_session, model_dir, prompt, png)
        assert v_prompt == hf_prompt, f"{family}: vLLM expanded the image differently"
        assert v_ids == hf_ids, (family, v_ids, hf_ids)
        # Equal log-probs (not just the argmax) mean the vision tower, M-RoPE and deepstack agree.
        torch.testing.assert_close(torch.tensor(v_logp), torch.tensor(hf_logp), atol=1e-3, rtol=0)

        out = root / "run"
        cfg = load_config("smoke.yaml", [f"trainer.output_dir={out}", f"model.path={model_dir}",
                                         f"data.prepared_dir={tmp_path / 'data'}", "sft.warmstart_dir=",
                                         "trainer.total_steps=1", "rollout.num_workers=1", "weight_sync.backend=gloo",
                                         "weight_sync.verify=every", "logging.progress=false"])
        summary = run_training(cfg)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [(r["step"], r["weight_version"], r.get("weight_verified")) for r in rows] == [(1, 1, 1.0)], rows
        for tag in ("before", "after"):
            assert summary[tag]["n"] > 0 and 0.0 <= summary[tag]["overall"]["accuracy"] <= 1.0
        saved = json.loads((out / "checkpoints" / "final" / "hf" / "config.json").read_text())
        assert saved["model_type"] == family
