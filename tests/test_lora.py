"""LoRA on the DeepSpeed learner (one rank, gloo, in this process): the adapter sits on the
language model only, the push sends the merged weights under the base names, the reference is
the base model, checkpoints hold the adapter, and `medr1 export` merges it into a plain HF model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_learner import dist_env, make_learner, make_samples, model_dir, one_thread  # noqa: F401

LORA = dict(lr=2e-2, micro_batch_size=8, **{"lora.rank": 8, "lora.alpha": 16.0})


def _learner(model_dir, **kw):
    from tests.test_learner import make_cfgs

    from learner.deepspeed_learner import GRPOLearner

    lc, gc = make_cfgs(**{k: v for k, v in {**LORA, **kw}.items() if "." not in k})
    for k, v in {**LORA, **kw}.items():
        if k.startswith("lora."):
            lc.lora[k[5:]] = v
    return GRPOLearner(str(model_dir), lc, gc, total_steps=10, samples_per_step_per_rank=8)


def test_target_pattern_covers_the_language_model_only():
    import re

    from learner.lora import target_regex

    pat = target_regex(["q_proj", "down_proj"])
    assert re.fullmatch(pat, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(pat, "model.language_model.layers.11.mlp.down_proj")
    assert not re.fullmatch(pat, "model.language_model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(pat, "model.visual.blocks.0.mlp.down_proj")  # Qwen2.5-VL / Qwen3-VL vision MLPs
    assert not re.fullmatch(pat, "model.language_model.layers.0.self_attn.q_proj.lora_A")
    assert re.fullmatch(target_regex(["down_proj"], freeze_vision=False), "model.visual.blocks.0.mlp.down_proj")


def test_lora_is_refused_with_zero3_and_bad_values():
    from pipelines.config import load_config
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="zero_stage <= 2"):
        load_config("smoke.yaml", ["learner.lora.rank=8", "learner.zero_stage=3"])
    with pytest.raises(ConfigError, match="learner.lora"):
        load_config("smoke.yaml", ["learner.lora.rank=8", "learner.lora.target_modules=[]"])
    assert load_config("smoke.yaml").learner.lora.rank == 0, "full fine-tuning stays the default"


def test_lora_trains_the_adapter_pushes_merged_weights_and_exports(model_dir, dist_env, tmp_path):  # noqa: F811
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    from learner.policy import load_policy, vllm_state_dict
    from pipelines.cli.main import main

    learner = _learner(model_dir)
    # Trainable: r * (in + out) per adapted linear. Tiny text dims, 2 layers: hidden 256, k/v 128 (2 KV heads of
    # 64), MLP 768. q, o: 8*512; k, v: 8*384; gate, up, down: 8*1024 -> 38,912 per layer.
    assert learner.param_counts["trainable"] == 2 * (2 * 8 * 512 + 2 * 8 * 384 + 3 * 8 * 1024) == 77_824
    base_sd = vllm_state_dict(load_policy(str(model_dir)))
    assert learner.param_counts["total"] == sum(t.numel() for t in base_sd.values()) + 77_824

    samples = make_samples(learner.processor, 8, seed=3)
    assert vllm_state_dict(learner.engine.module).keys() == base_sd.keys()
    for _ in range(2):
        m = learner.train_step(samples)
        assert np.isfinite(m["loss"])
    pushed = vllm_state_dict(learner.engine.module)
    assert pushed.keys() == base_sd.keys(), "merged pushes use the base checkpoint names"
    changed = {k for k in base_sd if not torch.equal(pushed[k], base_sd[k])}
    assert changed and all(".mlp." in k or "self_attn" in k for k in changed), changed
    assert not any(k.startswith("visual.") for k in changed), "the vision tower is frozen"
    # The merge is PEFT's own: W + scale * B @ A.
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = learner.engine.module.get_base_model().model.language_model.layers[0].self_attn.q_proj
    want = base_sd[q] + (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach() * (16.0 / 8)
    torch.testing.assert_close(pushed[q], want, atol=1e-6, rtol=0)

    # The reference is the base model: the adapter disabled, no second copy.
    assert learner.ref is None
    batch = learner._batch(samples[:2])
    with torch.no_grad():
        ref = learner._ref_logprobs(batch)
        base_logp, _ = learner._logprobs(load_policy(str(model_dir)).eval(), batch)
        pol, _ = learner._logprobs(learner.engine.module.eval(), batch)
    torch.testing.assert_close(ref, base_logp, atol=2e-5, rtol=0)
    assert (pol - base_logp).abs().max() > 1e-3, "the adapter changes the policy"

    # Checkpoints hold the adapter and the trainable state; the merged HF model only when asked.
    ck = tmp_path / "ckpt"
    learner.save_checkpoint(str(ck), {"step": 2})
    assert (ck / "adapter" / "adapter_model.safetensors").is_file() and not (ck / "hf").exists()
    assert json.loads((ck / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(model_dir)
    ds_bytes = sum(p.stat().st_size for p in (ck / "deepspeed").rglob("*") if p.is_file())
    assert ds_bytes < 3 * 4 * 77_824 * 3, "trainable state only (weights + two Adam moments), not the base"
    assert main(["export", str(ck), "--out", str(tmp_path / "export")]) == 0  # `medr1 export`
    out = tmp_path / "export"
    exported = load_file(str(out / "model.safetensors"))
    assert exported.keys() == pushed.keys()
    for k in exported:
        torch.testing.assert_close(exported[k], pushed[k], atol=1e-6, rtol=0)
    assert not isinstance(load_policy(str(out)), PeftModel)

    # The final export: the merged weights as a plain HF model, like full fine-tuning writes.
    learner.save_checkpoint(str(tmp_path / "final"), {"step": 2}, export_hf=True)
    final = load_file(str(tmp_path / "final" / "hf" / "model.safetensors"))
    assert final.keys() == pushed.keys() and all(torch.equal(final[k], pushed[k]) for k in final)

    # Resume: a fresh LoRA learner restores the adapter from the checkpoint.
    again = _learner(model_dir)
    assert again.load_checkpoint(str(ck)) == {"step": 2}
    restored = vllm_state_dict(again.engine.module)
    assert all(torch.equal(restored[k], pushed[k]) for k in pushed)


def test_export_refuses_a_checkpoint_without_an_adapter(tmp_path, capsys):
    from pipelines.cli.main import main

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no LoRA adapter" in err and "already a plain HF model" in err
