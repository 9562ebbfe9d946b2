"""The DeepSpeed GRPO learner on one rank (gloo, world of 1, in this process)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cluster.ray_utils import free_port
from learner.image_codec import decode_image
from tests.conftest import TEST_MAX_PIXELS, noise_png, tiny_dims


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pipelines.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-learner")
    build_tiny_model(out, tiny_dims(num_hidden_layers=2), max_pixels=TEST_MAX_PIXELS)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP with 2 threads stalls badly under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dist_env():
    if "RANK" not in os.environ or os.environ.get("WORLD_SIZE") != "1":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
    yield


def _prompt(processor, question: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


QUESTIONS = ["What modality? A)CT, B)MRI", "Which organ is shown in this image? A)Brain, B)Lung, C)Liver, D)Kidney",
             "Grade? A)1, B)2"]


def make_samples(processor, n: int, seed: int = 0, min_len: int = 3, max_len: int = 12, adv=None):
    from learner.samples import TrainSample

    g = torch.Generator().manual_seed(seed)
    eos = processor.tokenizer.eos_token_id
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(20, min(len(processor.tokenizer) - 20, 1500), (length - 1,), generator=g).tolist() + [eos]
        a = float(adv[i]) if adv is not None else float(torch.randn((), generator=g))
        out.append(TrainSample(f"p{i // 4}#{i % 4}", _prompt(processor, QUESTIONS[i % 3]),
                               noise_png(seed * 100 + i // 4, size=(112, 112) if i % 2 == 0 else (84, 56)), ids,
                               [-7.5] * length, a))
    return out


def make_cfgs(**learner):
    from omegaconf import OmegaConf

    from pipelines.config import GRPOConfig, LearnerConfig

    lc = OmegaConf.structured(LearnerConfig)
    gc = OmegaConf.structured(GRPOConfig)
    for k, v in learner.items():
        (gc if k in GRPOConfig.__dataclass_fields__ else lc)[k] = v
    return lc, gc


def make_learner(model_dir, total_steps=10, samples_per_step=8, **overrides):
    from learner.deepspeed_learner import GRPOLearner

    lc, gc = make_cfgs(**overrides)
    return GRPOLearner(str(model_dir), lc, gc, total_steps=total_steps, samples_per_step_per_rank=samples_per_step)


def weights(learner) -> dict[str, torch.Tensor]:
    from learner.policy import vllm_state_dict

    return vllm_state_dict(learner.engine.module)


# ----------------------------------------------------------------------------- inputs / log-probs


def test_build_inputs_completion_mask(model_dir):
    from learner.policy import build_inputs, load_processor

    proc = load_processor(str(model_dir))
    samples = make_samples(proc, 3)
    pad = proc.tokenizer.pad_token_id
    b = build_inputs(proc, samples, pad)
    B, L = b["input_ids"].shape
    Tc = b["completion_ids"].shape[1]
    assert Tc == max(len(s.completion_ids) for s in samples)
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert len(set(b["prompt_lengths"].tolist())) > 1, "test wants prompts of different lengths"
    for i, s in enumerate(samples):
        P, C = int(b["prompt_lengths"][i]), len(s.completion_ids)
        enc = proc(text=[s.prompt_text], images=[decode_image(s.image)], return_tensors="pt")
        assert torch.equal(b["input_ids"][i, :P], enc["input_ids"][0])
        assert torch.equal(b["input_ids"][i, P:P + C], torch.tensor(s.completion_ids))
        assert (b["input_ids"][i, P + C:] == pad).all()
        assert b["attention_mask"][i].tolist() == [1] * (P + C) + [0] * (L - P - C)
        assert b["completion_mask"][i].tolist() == [1.0] * C + [0.0] * (Tc - C)
        assert torch.equal(b["completion_ids"][i, :C], torch.tensor(s.completion_ids))
        assert b["old_logprobs"][i, :C].tolist() == s.old_logprobs
        # image pads expanded: (t * h * w) / merge^2 tokens, only inside the prompt
        t, h, w = b["image_grid_thw"][i].tolist()
        assert int((b["input_ids"][i, :P] == image_pad).sum()) == t * h * w // 4
        assert int(b["mm_token_type_ids"][i].sum()) > 0 and (b["mm_token_type_ids"][i, P:] == 0).all()
    assert b["pixel_values"].shape[0] == int(b["image_grid_thw"].prod(dim=1).sum())
    assert torch.allclose(b["advantages"], torch.tensor([s.advantage for s in samples]))


def _with_vision_tokens(processor, samples):
    """The samples with vision special tokens sampled into their completions, as a drifting policy does."""
    tok = processor.tokenizer
    image_pad, vision_start = (tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>"))
    for k, s in enumerate(samples):
        s.completion_ids[1:1] = [vision_start, image_pad] if k % 2 == 0 else [image_pad]
        s.old_logprobs[1:1] = [-7.5] * (2 if k % 2 == 0 else 1)
    return samples, 2 * ((len(samples) + 1) // 2) + len(samples) // 2


def test_build_inputs_never_reads_sampled_vision_tokens_as_placeholders(model_dir):
    from learner.policy import build_inputs, load_processor

    proc = load_processor(str(model_dir))
    samples, n_vision = _with_vision_tokens(proc, make_samples(proc, 3))
    pad = proc.tokenizer.pad_token_id
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    b = build_inputs(proc, samples, pad)
    assert int(b["vision_tokens"]) == n_vision
    for i, s in enumerate(samples):
        P, C = int(b["prompt_lengths"][i]), len(s.completion_ids)
        t, h, w = b["image_grid_thw"][i].tolist()
        assert int((b["input_ids"][i] == image_pad).sum()) == t * h * w // 4  # the image's own, no more
        is_vision = [c in (image_pad, proc.tokenizer.convert_tokens_to_ids("<|vision_start|>"))
                     for c in s.completion_ids]
        assert b["completion_mask"][i, :C].tolist() == [0.0 if v else 1.0 for v in is_vision]
        assert [int(x) for x, v in zip(b["input_ids"][i, P:P + C], is_vision) if v] == [pad] * sum(is_vision)
        assert b["completion_ids"][i, :C].tolist() == s.completion_ids  # kept for the record


def test_completion_logprobs_equals_full_forward(model_dir):
    from learner.policy import MODEL_INPUT_KEYS, build_inputs, completion_logprobs, load_policy, load_processor

    proc = load_processor(str(model_dir))
    model = load_policy(str(model_dir)).eval()
    samples = make_samples(proc, 3, seed=1)
    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        logp, ent = completion_logprobs(model, build_inputs(proc, samples, pad), compute_entropy=True)
        for i, s in enumerate(samples):
            one = build_inputs(proc, [s], pad)
            logits = model(**{k: one[k] for k in MODEL_INPUT_KEYS}).logits[0].float()
            P, C = int(one["prompt_lengths"][0]), len(s.completion_ids)
            full = torch.log_softmax(logits[P - 1:P + C - 1], dim=-1)
            manual = full.gather(-1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(logp[i, :C], manual, atol=2e-5, rtol=0)
            assert (logp[i, C:] == 0).all()
            manual_ent = -(full.exp() * full).sum(-1)
            torch.testing.assert_close(ent[i, :C], manual_ent, atol=2e-4, rtol=0)
        # temperature divides the logits
        logp_t, _ = completion_logprobs(model, build_inputs(proc, samples[:1], pad), temperature=0.7)
        one = build_inputs(proc, samples[:1], pad)
        P, C = int(one["prompt_lengths"][0]), len(samples[0].completion_ids)
        logits = model(**{k: one[k] for k in MODEL_INPUT_KEYS}).logits[0].float()
        manual = torch.log_softmax(logits[P - 1:P + C - 1] / 0.7, -1).gather(
            -1, torch.tensor(samples[0].completion_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(logp_t[0, :C], manual, atol=2e-5, rtol=0)


def test_vllm_names_equal_saved_checkpoint(model_dir):
    from safetensors import safe_open

    from learner.policy import load_policy, vllm_state_dict

    model = load_policy(str(model_dir))
    sd = vllm_state_dict(model)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert set(sd) == keys
        for k in keys:
            assert torch.equal(sd[k], f.get_tensor(k)), k
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in sd.values())


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def learner(model_dir, dist_env):
    """ZeRO-2, beta > 0 (reference model), large lr so one step is visible."""
    return make_learner(model_dir, zero_stage=2, lr=1e-3, beta=0.04, micro_batch_size=3)


def test_train_step_changes_weights(learner):
    samples = make_samples(learner.processor, 8, seed=2)
    before = weights(learner)
    m = learner.train_step(samples)
    after = weights(learner)
    for k in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_mean", "entropy", "grad_norm", "lr", "num_tokens",
              "learner_time"):
        assert k in m and np.isfinite(m[k]), (k, m)
    assert m["num_tokens"] == sum(len(s.completion_ids) for s in samples)
    assert m["lr"] == pytest.approx(1e-3)
    assert m["grad_norm"] > 0
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first step
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    m2 = learner.train_step(samples)
    assert m2["kl"] > 0 and np.isfinite(m2["loss"])


def test_sampled_vision_tokens_train_through(learner):
    """Without masking, one extra <|image_pad|> fails the forward ("Image features and image
    tokens do not match"); with it, steps go on and the tokens are counted."""
    samples, n_vision = _with_vision_tokens(learner.processor, make_samples(learner.processor, 4, seed=5))
    for _ in range(3):
        m = learner.train_step(samples)
        assert np.isfinite(m["loss"]) and m["vision_tokens_masked"] == n_vision


def test_push_state_dict_matches_checkpoint_names_and_model(learner, model_dir):
    from safetensors import safe_open

    sd = learner.gather_state_dict()
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert set(sd) == set(f.keys())
    module = learner.engine.module
    mem = dict(module.named_parameters())
    assert torch.equal(sd["model.embed_tokens.weight"], mem["model.language_model.embed_tokens.weight"].detach())
    assert torch.equal(sd["visual.patch_embed.proj.weight"], mem["model.visual.patch_embed.proj.weight"].detach())
    assert torch.equal(sd["model.norm.weight"], mem["model.language_model.norm.weight"].detach())
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in sd.values())


def test_positive_advantage_raises_logprob(model_dir, dist_env):
    from learner.policy import build_inputs, completion_logprobs

    lrn = make_learner(model_dir, zero_stage=2, lr=1e-3, beta=0.0, micro_batch_size=2)
    proc = lrn.processor
    s_pos, s_neg = make_samples(proc, 2, seed=3, min_len=6, max_len=6, adv=[1.0, -1.0])
    pad = proc.tokenizer.pad_token_id

    def seq_logp():
        with torch.no_grad():
            lp, _ = completion_logprobs(lrn.engine.module, build_inputs(proc, [s_pos, s_neg], pad))
        return lp.sum(1)

    before = seq_logp()
    # on-policy: old log-probs are the current ones, so the ratio starts at 1
    with torch.no_grad():
        for s in (s_pos, s_neg):
            s.old_logprobs = completion_logprobs(lrn.engine.module, build_inputs(proc, [s], pad))[0][0].tolist()
    m = lrn.train_step([s_pos, s_neg])
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    after = seq_logp()
    assert after[0] > before[0] + 0.05, (before, after)
    assert after[1] < before[1] - 0.05, (before, after)


def test_mini_batches_step_like_consecutive_batches(model_dir, dist_env):
    """mini_batches=2 on 8 samples = two optimizer steps, each on the loss of its own 4 samples:
    the same weights as two train_steps on the halves."""
    kw = dict(zero_stage=2, lr=1e-3, beta=0.04, micro_batch_size=2)
    split = make_learner(model_dir, mini_batches=2, **kw)
    halves = make_learner(model_dir, **kw)
    samples = make_samples(split.processor, 8, seed=5)
    m = split.train_step(samples)
    halves.train_step(samples[:4])
    halves.train_step(samples[4:])
    assert split.optimizer_steps == 2 and m["num_samples"] == 8
    a, b = weights(split), weights(halves)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    one_step = make_learner(model_dir, **kw)
    one_step.train_step(samples)
    c = weights(one_step)
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-4, "two steps differ from one"


def test_empty_batch_is_skipped(learner):
    steps = learner.optimizer_steps
    m = learner.train_step([])
    assert m["skipped"] == 1.0 and learner.optimizer_steps == steps


def test_checkpoint_round_trip(learner, tmp_path):
    from safetensors import safe_open
    from transformers import Qwen2VLForConditionalGeneration

    from learner.policy import vllm_state_dict

    samples = make_samples(learner.processor, 6, seed=4)
    learner.train_step(samples)
    saved = weights(learner)
    steps = learner.optimizer_steps
    lr_saved = learner.scheduler.get_last_lr()[0]
    learner.save_checkpoint(str(tmp_path / "ckpt"), client_state={"cursor": 17, "weight_version": 3,
                                                                 "rng": [1, 2, 3]})
    with safe_open(str(tmp_path / "ckpt" / "hf" / "model.safetensors"), "pt") as f:
        hf_keys = set(f.keys())
    assert hf_keys == set(saved)
    reloaded = vllm_state_dict(Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path / "ckpt" / "hf")))
    assert set(reloaded) == set(saved) and all(torch.equal(reloaded[k], saved[k]) for k in saved)

    m_next = learner.train_step(samples)  # the step a resumed run should reproduce exactly
    expected = weights(learner)
    assert any(not torch.equal(expected[k], saved[k]) for k in saved)

    client = learner.load_checkpoint(str(tmp_path / "ckpt"))
    assert client == {"cursor": 17, "weight_version": 3, "rng": [1, 2, 3]}
    assert learner.optimizer_steps == steps
    assert learner.scheduler.get_last_lr()[0] == pytest.approx(lr_saved)
    restored = weights(learner)
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    m_again = learner.train_step(samples)  # same optimizer moments -> same update
    again = weights(learner)
    for k in saved:
        torch.testing.assert_close(again[k], expected[k], atol=1e-6, rtol=0)
    assert m_again["loss"] == pytest.approx(m_next["loss"], abs=1e-6)


def test_corrupted_checkpoint_is_refused(learner, tmp_path):
    from learner.checkpoint_manifest import CheckpointError

    ckpt = tmp_path / "ckpt"
    learner.save_checkpoint(str(ckpt))
    learner.load_checkpoint(str(ckpt))  # intact: loads
    states = max((ckpt / "deepspeed").rglob("*model_states.pt"), key=lambda p: p.stat().st_size)
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the model-state file
    states.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{states.relative_to(ckpt).as_posix()} does not match"):
        learner.load_checkpoint(str(ckpt))


def test_lr_schedules():
    from learner.deepspeed_learner import build_scheduler

    def lrs(schedule: str, total: int, warmup: float) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = build_scheduler(opt, schedule, total, warmup), []
        for _ in range(total + 1):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    f = lrs("cosine", 10, 0.2)
    assert f[0] == pytest.approx(1 / 3) and f[1] == pytest.approx(2 / 3)
    assert f[2] == pytest.approx(1.0) and f[10] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < f[6] < 1.0
    g = lrs("linear", 10, 0.0)
    assert g[0] == 1.0 and g[5] == pytest.approx(0.5)
    assert lrs("constant", 10, 0.0) == [1.0] * 11
    assert lrs("constant", 10, 0.2)[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # "constant" warms up too
    with pytest.raises(KeyError):
        lrs("step", 10, 0.0)


def test_ds_config_from_learner_cfg():
    from learner.deepspeed_learner import build_ds_config

    lc, _ = make_cfgs(zero_stage=3, micro_batch_size=4, grad_clip=0.5, bf16=True)
    cfg = build_ds_config(lc, world_size=2, samples_per_step_per_rank=10, client_optimizer=True)
    assert cfg["gradient_accumulation_steps"] == 3 and cfg["train_batch_size"] == 24
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] is True and "optimizer" not in cfg
