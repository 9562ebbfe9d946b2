"""The locally built Qwen2-VL: tokenizer behaviour, determinism, and the same
greedy continuation in transformers and in vLLM."""
from __future__ import annotations

import hashlib

import pytest

from learner.image_codec import decode_image
from tests.conftest import TEST_MAX_PIXELS, noise_png, tiny_dims

QUESTION = "What imaging modality is shown? A)CT, B)MRI, C)X-ray, D)OCT"


def _messages(text: str):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_tag_tokens_are_single_and_not_special(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (tag, ids)
        assert ids[0] not in tok.all_special_ids, f"{tag} must not be special (decoders would drop it)"
    completion = "<think>bright ring, so CT</think> <answer>A</answer>"
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == completion


def test_chat_template_round_trips_prompt(tiny_model_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    text = proc.apply_chat_template(_messages(QUESTION), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert proc.tokenizer.decode(ids) == text
    # The processor expands the single image pad into one token per merged patch.
    inputs = proc(text=[text], images=[decode_image(noise_png(0))], return_tensors="pt")
    n_pad = int((inputs["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert n_pad == t * h * w // 4 == 16  # 112x112 px, 14 px patches, 2x2 merge


def test_build_is_deterministic_for_a_seed(tmp_path):
    from pipelines.models.tiny import build_tiny_model

    small = dict(num_hidden_layers=1, vision_depth=1)
    digests = []
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = build_tiny_model(tmp_path / run, tiny_dims(seed=seed, **small), max_pixels=TEST_MAX_PIXELS)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in out.iterdir() if p.name in ("model.safetensors", "tokenizer.json", "config.json")})
    assert digests[0] == digests[1]
    assert digests[0]["tokenizer.json"] == digests[2]["tokenizer.json"]
    assert digests[0]["model.safetensors"] != digests[2]["model.safetensors"]


def test_head_dim_must_be_64(tmp_path):
    from pipelines.models.tiny import build_tiny_model

    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path, tiny_dims(num_attention_heads=8), max_pixels=TEST_MAX_PIXELS)


@pytest.mark.slow
def test_vllm_and_transformers_agree_on_greedy(tiny_model_dir, rollout_worker, ray_session):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    text = proc.apply_chat_template(_messages(QUESTION), add_generation_prompt=True, tokenize=False)
    png = noise_png(1)
    inputs = proc(text=[text], images=[decode_image(png)], return_tensors="pt")
    with torch.no_grad():
        hf = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()

    out = ray_session.get(rollout_worker.generate.remote(
        [{"id": "q", "prompt": text, "image": png}], {"n": 1, "temperature": 0.0, "max_tokens": 8}))
    [result] = out["results"]
    assert result["error"] is None
    assert result["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    vllm_ids = result["completions"][0]["token_ids"]
    assert vllm_ids[:4] == hf[:4], (vllm_ids, hf)


@pytest.mark.slow
def test_a_seeded_rollout_larger_than_one_prefill_chunk_runs_as_one_batch(tiny_model_dir, rollout_worker,
                                                                          ray_session):
    """64 prompts x 4 samples with per-prompt seeds: more prompt tokens than one chunked-prefill
    budget (4096). vLLM's CPU sampler used to fail such a batch ("CPU Generator does not use
    offset"), and the engine then fell back to one prompt at a time."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [{"id": f"p{i}", "image": noise_png(i % 3), "seed": 1000 + i,
                "prompt": tok.apply_chat_template(_messages(f"{QUESTION} Case {i}."), add_generation_prompt=True,
                                                  tokenize=False)} for i in range(64)]
    out = ray_session.get(rollout_worker.generate.remote(prompts, {"n": 4, "temperature": 1.0, "max_tokens": 4}))
    assert sum(len(r["prompt_token_ids"]) for r in out["results"]) > 4096
    assert all(r["error"] is None and len(r["completions"]) == 4 for r in out["results"])
    assert out["batch_retries"] == 0
