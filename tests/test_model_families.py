"""Every Qwen-VL generation through the same learner code: the tiny replica of each family
(its real config, model and processor classes) is recognised from its config.json, batches
with right padding give each sample's own log-probs (M-RoPE positions computed by the model),
and the names a push sends are the names its saved checkpoint holds."""
from __future__ import annotations

import json

import pytest
import torch

from learner.image_codec import decode_image
from learner.model_family import FAMILIES, ModelFamily
from tests.conftest import TEST_MAX_PIXELS, tiny_dims
from tests.test_learner import make_samples, one_thread  # noqa: F401 (autouse fixture)

FAMILY_IDS = [f.value for f in ModelFamily]


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family_dir(request, tmp_path_factory):
    from pipelines.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    build_tiny_model(out, tiny_dims(num_hidden_layers=2), max_pixels=TEST_MAX_PIXELS, family=request.param)
    return request.param, out


def test_replica_is_the_family_it_claims(family_dir):
    from transformers import AutoProcessor

    from learner.model_family import family_of
    from learner.policy import load_policy

    family, d = family_dir
    spec = FAMILIES[ModelFamily(family)]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["architectures"] == [spec.architecture]
    assert family_of(str(d)) == family
    model = load_policy(str(d))
    assert type(model).__name__ == spec.architecture
    assert any(n.startswith("model.visual.") for n, _ in model.named_parameters()), "vision tower included"
    proc = AutoProcessor.from_pretrained(d)
    assert type(proc).__name__ == spec.processor_class
    assert proc.image_processor.patch_size == spec.patch_size
    assert cfg["text_config"].get("head_dim", cfg["text_config"]["hidden_size"] // cfg["text_config"][
        "num_attention_heads"]) == 64, "vLLM's CPU attention needs head_dim 64"


def test_an_unsupported_family_is_refused_naming_the_file(tmp_path):
    from learner.policy import load_policy

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForX"]}))
    with pytest.raises(ValueError, match=r"config\.json.*'llava' is not a supported family"):
        load_policy(str(tmp_path))


def test_batched_logprobs_equal_each_sample_alone(family_dir):
    """Right-padded rows of different prompt lengths and image sizes: each row's completion
    log-probs equal a forward of that sample alone (so M-RoPE positions, the image features and
    the log-prob window are per row)."""
    from learner.policy import MODEL_INPUT_KEYS, build_inputs, completion_logprobs, load_policy, load_processor

    _, d = family_dir
    proc = load_processor(str(d))
    model = load_policy(str(d)).eval()
    samples = make_samples(proc, 3, seed=1)
    pad = proc.tokenizer.pad_token_id
    b = build_inputs(proc, samples, pad)
    assert len(set(b["prompt_lengths"].tolist())) > 1
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():
        logp, _ = completion_logprobs(model, b)
        for i, s in enumerate(samples):
            enc = proc(text=[s.prompt_text], images=[decode_image(s.image)], return_tensors="pt")
            t, h, w = enc["image_grid_thw"][0].tolist()
            assert int((enc["input_ids"] == image_pad).sum()) == t * h * w // 4
            one = build_inputs(proc, [s], pad)
            logits = model(**{k: one[k] for k in MODEL_INPUT_KEYS}).logits[0].float()
            P, C = int(one["prompt_lengths"][0]), len(s.completion_ids)
            manual = torch.log_softmax(logits[P - 1:P + C - 1], dim=-1).gather(
                -1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(logp[i, :C], manual, atol=2e-5, rtol=0)
            assert (logp[i, C:] == 0).all()


def test_pushed_names_equal_the_saved_checkpoint(family_dir, tmp_path):
    """The names a push sends are those ``save_pretrained`` writes, for a model loaded from disk and
    for one saved again after loading (transformers' own conversion mapping, reversed)."""
    from safetensors import safe_open

    from learner.policy import load_policy, vllm_state_dict

    _, d = family_dir
    model = load_policy(str(d))
    sd = vllm_state_dict(model)
    model.save_pretrained(tmp_path)
    for src in (d, tmp_path):
        with safe_open(str(src / "model.safetensors"), "pt") as f:
            assert set(f.keys()) == set(sd)
            for k in f.keys():
                assert torch.equal(sd[k], f.get_tensor(k)), k


@pytest.mark.parametrize("name,family,max_pixels", [("medr1_qwen2vl_2b.yaml", "Qwen2-VL-2B", 401408),
                                                     ("medr1_qwen2_5vl_3b.yaml", "Qwen2.5-VL-3B", 401408),
                                                     ("medr1_qwen3vl_2b.yaml", "Qwen3-VL-2B", 512 * 32 * 32)])
def test_paper_configs_keep_the_recipe_and_name_their_checkpoint(name, family, max_pixels):
    from pipelines.config import load_config

    cfg = load_config(name)
    assert cfg.model.path == f"Qwen/{family}-Instruct" and not cfg.model.build_tiny_if_missing
    assert cfg.model.max_pixels == max_pixels  # 512 visual tokens: 28 px each for Qwen2(.5)-VL, 32 px for Qwen3-VL
    assert (cfg.rollout.group_size, cfg.grpo.beta, str(cfg.grpo.kl_estimator), cfg.learner.lr) == (4, 0.04, "k3", 1e-6)
    assert (cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.data.max_prompt_length) == (256, 1.0, 1024)
    assert cfg.learner.zero_stage == 2 and cfg.learner.bf16
    assert (cfg.rollout.num_workers, cfg.learner.num_workers) == (4, 4)


def test_init_model_builds_the_asked_family(tmp_path, capsys):
    from pipelines.cli.main import main

    out = tmp_path / "q25"
    assert main(["init-model", "--family", "qwen2_5_vl", "--out", str(out), "model.tiny.num_hidden_layers=1",
                 "model.tiny.vision_depth=1"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert json.loads((out / "medr1_tiny.json").read_text())["family"] == "qwen2_5_vl"
    assert "tiny Qwen2.5-VL written to" in capsys.readouterr().out
