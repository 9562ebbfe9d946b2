"""The shared-prefix layout (each prompt once per micro-batch, its KV cache indexed over its
completions) gives the per-sample layout's log-probs, GRPO loss and parameter gradients, in every
Qwen-VL family, for several groups of different prompt, image and completion lengths."""
from __future__ import annotations

import pytest
import torch

from learner.model_family import ModelFamily
from tests.conftest import TEST_MAX_PIXELS, noise_png, tiny_dims
from tests.test_learner import QUESTIONS, _prompt, make_cfgs, one_thread  # noqa: F401 (autouse fixture)

FAMILY_IDS = [f.value for f in ModelFamily]


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family(request, tmp_path_factory):
    from learner.policy import load_processor
    from pipelines.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp(f"tiny-sp-{request.param}")
    build_tiny_model(out, tiny_dims(num_hidden_layers=2), max_pixels=TEST_MAX_PIXELS, family=request.param)
    return out, load_processor(str(out))


def groups(processor, sizes=(3, 4, 2), vision_in=1, seed=0):
    """len(sizes) groups (prompt + image shared within a group; questions, image sizes and
    completion lengths differ), one completion of group ``vision_in`` holding a sampled <|image_pad|>."""
    from learner.samples import TrainSample

    g = torch.Generator().manual_seed(seed)
    eos = processor.tokenizer.eos_token_id
    hi = min(len(processor.tokenizer) - 20, 1500)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    out = []
    for gi, n in enumerate(sizes):
        text = _prompt(processor, QUESTIONS[gi % len(QUESTIONS)])
        image = noise_png(seed * 10 + gi, size=[(112, 112), (84, 56), (56, 84)][gi % 3])
        for k in range(n):
            length = 2 + (3 * k + gi) % 9  # 2..10 tokens, different within each group
            ids = torch.randint(20, hi, (length - 1,), generator=g).tolist() + [eos]
            if gi == vision_in and k == 0:
                ids[0] = image_pad
            out.append(TrainSample(f"p{gi}#{k}", text, image, ids, [-6.0 - 0.1 * j for j in range(length)],
                                   float(torch.randn((), generator=g))))
    return out


def both(processor, samples):
    from learner.policy import build_inputs
    from learner.shared_prefix import build_prefix_inputs

    pad = processor.tokenizer.pad_token_id
    return build_inputs(processor, samples, pad), build_prefix_inputs(processor, samples, pad)


def test_prefix_layout(family):
    """One prefix row per distinct prompt (less its last token), each sample's tail starts with that
    token, and the completion side (what the loss reads) is the per-sample layout's."""
    _, proc = family
    samples = groups(proc)
    a, b = both(proc, samples)
    assert b["input_ids"].shape[0] == 3 and b["group_index"].tolist() == [0] * 3 + [1] * 4 + [2] * 2
    assert b["image_grid_thw"].shape[0] == 3 and a["image_grid_thw"].shape[0] == 9
    for i, g in enumerate(b["group_index"].tolist()):
        p = int(a["prompt_lengths"][i])
        assert int(b["attention_mask"][g].sum()) == p - 1
        assert torch.equal(b["input_ids"][g, :p - 1], a["input_ids"][i, :p - 1])
        c = int(a["completion_lengths"][i])
        assert torch.equal(b["tail_ids"][i, :c + 1], a["input_ids"][i, p - 1:p + c]), "fed ids, vision as pad"
        assert int(b["tail_mask"][i].sum()) == c + 1
    for k in ("completion_ids", "completion_mask", "old_logprobs", "advantages", "completion_lengths",
              "prompt_lengths", "vision_tokens"):
        assert torch.equal(a[k], b[k]), k
    assert int(b["vision_tokens"]) == 1 and b["completion_mask"][3, 0] == 0


def test_completion_positions_continue_the_prompt(family):
    """The M-RoPE positions of each tail (last prompt token + completion) are the ones the model
    gives those tokens in the sample's own full row."""
    from learner.policy import load_policy
    from learner.shared_prefix import _rope_owner, prefix_positions

    d, proc = family
    model = load_policy(str(d))
    a, b = both(proc, groups(proc))
    full, _ = _rope_owner(model).get_rope_index(a["input_ids"], mm_token_type_ids=a["mm_token_type_ids"],
                                                image_grid_thw=a["image_grid_thw"], attention_mask=a["attention_mask"])
    pre, nxt = prefix_positions(model, b)
    for i, g in enumerate(b["group_index"].tolist()):
        p, c = int(a["prompt_lengths"][i]), int(a["completion_lengths"][i])
        assert torch.equal(pre[:, g, :p - 1], full[:, i, :p - 1])
        want = full[:, i, p - 1:p + c]
        assert torch.equal(want, (nxt[g] + torch.arange(c + 1))[None].expand(3, -1)), (i, want)
    assert len(set(nxt.tolist())) > 1


def test_logprobs_equal_per_sample(family):
    from learner.policy import completion_logprobs, load_policy
    from learner.shared_prefix import shared_prefix_logprobs

    d, proc = family
    model = load_policy(str(d)).eval()
    a, b = both(proc, groups(proc))
    with torch.no_grad():
        la, ea = completion_logprobs(model, a, temperature=0.7, compute_entropy=True)
        lb, eb = shared_prefix_logprobs(model, b, temperature=0.7, compute_entropy=True)
    torch.testing.assert_close(lb, la, atol=2e-5, rtol=0)
    torch.testing.assert_close(eb, ea, atol=2e-5, rtol=0)
    assert la[a["completion_mask"].bool()].std() > 0.01, "non-trivial log-probs"
    assert (la[~a["completion_mask"].bool()] == 0).all()


def test_loss_and_gradients_equal_per_sample(family):
    """The GRPO loss (beta > 0, token-mean) and every parameter's gradient, vision tower included:
    the one prefix computation receives the gradients of all its completions."""
    from learner.objectives import grpo_objective
    from learner.policy import completion_logprobs, load_policy
    from learner.shared_prefix import shared_prefix_logprobs

    d, proc = family
    model = load_policy(str(d)).train()
    a, b = both(proc, groups(proc))
    _, g = make_cfgs(beta=0.04, loss_agg="token_mean")
    ref = torch.full_like(a["old_logprobs"], -6.5)

    def run(fn, batch):
        model.zero_grad(set_to_none=True)
        logp, ent = fn(model, batch, compute_entropy=True)
        loss, _ = grpo_objective(logp, batch, ref, g, ent)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    la, ga = run(completion_logprobs, a)
    lb, gb = run(shared_prefix_logprobs, b)
    torch.testing.assert_close(lb, la, atol=1e-6, rtol=1e-5)
    assert ga.keys() == gb.keys() and any(n.startswith("model.visual.") for n in ga)
    for n in ga:
        scale = float(ga[n].abs().max()) + 1e-8
        torch.testing.assert_close(gb[n] / scale, ga[n] / scale, atol=1e-4, rtol=0, msg=n)
    assert sum(float(t.abs().sum()) for t in ga.values()) > 0


def test_gradient_checkpointing_gives_the_same_gradients(family):
    """Checkpointed layers are replayed in the backward: the prefix cache must not be written twice
    nor the tails' cache grow, or the replay would see other keys (or transformers would drop the cache)."""
    from learner.objectives import grpo_objective
    from learner.policy import completion_logprobs, load_policy
    from learner.shared_prefix import shared_prefix_logprobs

    d, proc = family
    plain, ckpt = load_policy(str(d)).train(), load_policy(str(d))
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt.train()
    a, b = both(proc, groups(proc, sizes=(2, 3)))
    _, g = make_cfgs(beta=0.0)

    def grads(model, fn, batch):
        logp, _ = fn(model, batch)
        grpo_objective(logp, batch, None, g, None)[0].backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ga, gb = grads(plain, completion_logprobs, a), grads(ckpt, shared_prefix_logprobs, b)
    assert ga.keys() == gb.keys()
    for n in ga:
        scale = float(ga[n].abs().max()) + 1e-8
        torch.testing.assert_close(gb[n] / scale, ga[n] / scale, atol=1e-4, rtol=0, msg=n)
