"""Push correctness: after a GRPO update is pushed into the running vLLM engine,
vLLM's greedy continuation equals the learner's own HF greedy continuation, and
differs from what the engine produced before the push. Under LoRA the push carries the
merged weights and the learner generates through PEFT with the adapter active.

Both ways a CPU engine holds linear weights are covered (actors/cpu_weights.py): packed for
oneDNN (the default; vLLM's layer-wise reload) over the object store and shared memory, and
plain (after the first push the engine's parameters are views of the shared segment, so a push
is the learner's write alone) over shared memory."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import noise_png

pytestmark = pytest.mark.slow


@pytest.fixture
def engine(request, tiny_model_dir, ray_session):
    """(backend, cpu_linear, rollout actor, whether it is the session's shared actor)."""
    backend, cpu_linear = request.param
    if backend == "object_store" and cpu_linear == "packed":
        yield backend, cpu_linear, request.getfixturevalue("rollout_worker"), True
        return
    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from cluster.ray_utils import kill_quietly
    from tests.conftest import REPO, TEST_MAX_PIXELS

    kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=128 << 20,
                  max_pixels=TEST_MAX_PIXELS, seed=0, weight_sync=backend, cpu_linear=cpu_linear)
    env = {**cpu_engine_env(f"0-{(os.cpu_count() or 2) - 1}"), "PYTHONPATH": str(REPO)}
    [worker] = create_rollout_workers(1, kwargs, num_cpus=1, env_vars=[env], name_prefix=f"push-{cpu_linear}")
    try:
        wait_ready([worker])
        yield backend, cpu_linear, worker, False
    finally:
        kill_quietly([worker])


@pytest.mark.parametrize("engine,lora_rank", [(("object_store", "packed"), 0), (("object_store", "packed"), 8),
                                              (("shm", "plain"), 0), (("shm", "packed"), 0)],
                         ids=["full", "lora8", "shm-plain", "shm-packed"], indirect=["engine"])
def test_push_makes_vllm_match_learner(tiny_model_dir, engine, ray_session, lora_rank):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup
    from actors.weight_sync import make_weight_sync
    from learner.samples import TrainSample
    from pipelines.config import MedR1Config
    from pipelines.prompts import chat_prompt

    ray = ray_session
    backend, cpu_linear, rollout_worker, shared = engine
    cfg = OmegaConf.structured(MedR1Config)
    cfg.learner.lr = 5e-3 if not lora_rank else 2e-2  # LoRA's B starts at 0: a larger step to move the greedy
    cfg.learner.lora.rank = lora_rank
    cfg.learner.micro_batch_size = 8
    cfg.grpo.beta = 0.0
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rec = {"question": "Which organ is shown?", "options": ["Brain", "Lung", "Liver", "Kidney"]}
    prompt = chat_prompt(tok, rec)
    probe = {"id": "probe", "prompt": prompt, "image": noise_png(7)}
    greedy = {"n": 1, "temperature": 0.0, "max_tokens": 8, "logprobs": False}

    def vllm_greedy() -> list[int]:
        [r] = ray.get(rollout_worker.generate.remote([probe], greedy))["results"]
        return r["completions"][0]["token_ids"]

    version0 = ray.get(rollout_worker.get_weight_version.remote())
    before = vllm_greedy()

    # Sampled completions with alternating advantages: a real, non-zero policy gradient.
    out = ray.get(rollout_worker.generate.remote(
        [{"id": f"p{i}", "prompt": prompt, "image": noise_png(i)} for i in range(4)],
        {"n": 4, "temperature": 1.0, "max_tokens": 8, "seed": 1}))
    samples = []
    for r in out["results"]:
        for k, c in enumerate(r["completions"]):
            samples.append(TrainSample(f"{r['prompt_id']}#{k}", prompt, noise_png(int(r["prompt_id"][1:])),
                                       c["token_ids"], c["logprobs"], 1.0 if k % 2 == 0 else -1.0))
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    group = LearnerGroup(str(tiny_model_dir), cfg.learner, cfg.grpo, total_steps=4, samples_per_step=len(samples),
                         num_workers=1, env=env)
    try:
        for _ in range(3):
            metrics = group.train_step(samples, 4)
            assert np.isfinite(metrics["loss"])
        # Plain weights over shm: the engine's parameters become views of the segment at the first push
        # (actors/shm_alias.py), so the second, unverified push is the learner's write alone; the greedy
        # check below is what shows it landed.
        in_place = backend == "shm" and cpu_linear == "plain"
        sync = make_weight_sync(backend, verify="first" if in_place else "every")  # "every": kernel checks too
        for v in (version0 + 1, version0 + 2):  # the second push reuses the group (and, for shm, the segment)
            stats = sync.push(group, [rollout_worker], v)
            assert stats["push_bytes"] > 1_000_000 and stats["weight_version"] == v
            if v == version0 + 1 or not in_place:
                assert stats["weight_verified"] == 1.0
            else:
                assert stats["push_in_place_tensors"] > 0, stats
            assert ray.get(rollout_worker.get_weight_version.remote()) == v
            if v == version0 + 1:
                # The second push carries weights the engine has not seen: with a tied LM head, a stale packed
                # copy of the first weights went unnoticed by a single push and its greedy check.
                group.train_step(samples, 4)
        after = vllm_greedy()
        learner = group.greedy_generate(prompt, probe["image"], 8)
        if in_place:  # an engine that dies before a push is left out and named; the run would catch it up
            ray.kill(rollout_worker, no_restart=True)
            stats = sync.push(group, [rollout_worker], version0 + 3)
            assert stats["failed_workers"] == [0] and stats["push_bytes"] == 0, stats
    finally:
        if shared:  # put the shared engine back on the base weights for the other tests
            from safetensors.torch import load_file

            base = load_file(str(tiny_model_dir / "model.safetensors"))
            ray.get(rollout_worker.load_weights.remote(base, version0))
        elif backend != "object_store":
            group.call_all("shutdown_weight_transfer")
        group.shutdown()
    assert after != before, "the push did not change the engine's output"
    assert after[:4] == learner[:4], (after, learner)
