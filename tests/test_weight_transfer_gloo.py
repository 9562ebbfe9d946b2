"""The broadcast weight push on real engines, over gloo: the same trainer/worker protocol as
the GPU's NCCL path (vLLM's weight-transfer API, packed buckets, rank offsets), between a
real DeepSpeed learner rank 0 and two real vLLM CPU engines.

- after 3 learner updates and a push (buckets far smaller than the model), both engines'
  greedy continuation equals the learner's HF greedy continuation, and the per-tensor
  check (weight_sync.verify) passes;
- an engine killed between pushes is restarted by Ray; the next push finds it outside
  the group and goes on without it (the other engine verified), then it rejoins the
  re-formed group and is verified;
- a push while an engine is gone for good goes on to the others within
  weight_sync.timeout_s and names the one it left out.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.conftest import REPO, TEST_MAX_PIXELS, noise_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gloo_engines(ray_session, tiny_model_dir):
    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env

    kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                  max_pixels=TEST_MAX_PIXELS, seed=0, weight_sync="gloo")
    cores = os.cpu_count() or 2
    env = [{**cpu_engine_env(str(i % cores)), "PYTHONPATH": str(REPO)} for i in range(2)]
    workers = create_rollout_workers(2, kwargs, num_cpus=1, env_vars=env, name_prefix="gloo-rollout",
                                     max_restarts=1)
    wait_ready(workers)
    yield workers
    from cluster.ray_utils import kill_quietly

    kill_quietly(workers)


def _samples(ray, worker, prompt):
    from learner.samples import TrainSample

    out = ray.get(worker.generate.remote([{"id": f"p{i}", "prompt": prompt, "image": noise_png(i)} for i in range(4)],
                                         {"n": 4, "temperature": 1.0, "max_tokens": 8, "seed": 1}))
    return [TrainSample(f"{r['prompt_id']}#{k}", prompt, noise_png(int(r["prompt_id"][1:])), c["token_ids"],
                        c["logprobs"], 1.0 if k % 2 == 0 else -1.0)
            for r in out["results"] for k, c in enumerate(r["completions"])]


def test_gloo_push_restart_and_dead_peer(ray_session, tiny_model_dir, gloo_engines):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup
    from actors.weight_sync import make_weight_sync
    from pipelines.config import MedR1Config
    from pipelines.prompts import chat_prompt

    ray, workers = ray_session, gloo_engines
    cfg = OmegaConf.structured(MedR1Config)
    cfg.learner.lr, cfg.learner.micro_batch_size, cfg.grpo.beta = 5e-3, 8, 0.0
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = chat_prompt(tok, {"question": "Which organ is shown?", "options": ["Brain", "Lung", "Liver", "Kidney"]})
    probe = {"id": "probe", "prompt": prompt, "image": noise_png(7)}
    greedy = {"n": 1, "temperature": 0.0, "max_tokens": 8, "logprobs": False}

    def engine_greedy(w) -> list[int]:
        return ray.get(w.generate.remote([probe], greedy))["results"][0]["completions"][0]["token_ids"]

    before = [engine_greedy(w) for w in workers]
    samples = _samples(ray, workers[0], prompt)
    group = LearnerGroup(str(tiny_model_dir), cfg.learner, cfg.grpo, total_steps=4, samples_per_step=len(samples),
                         num_workers=1, env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    # 1 MiB buckets: the 16 MB model travels in many packed broadcasts.
    sync = make_weight_sync("gloo", bucket_size_mb=1, timeout_s=60, verify="every", dtype="float32")
    try:
        for _ in range(3):
            assert np.isfinite(group.train_step(samples, 4)["loss"])
        stats = sync.push(group, workers, 1)
        assert stats["weight_verified"] == 1.0 and stats["push_bytes"] > 8 * (1 << 20)
        assert ray.get([w.get_weight_version.remote() for w in workers]) == [1, 1]
        learner = group.greedy_generate(prompt, probe["image"], 8)
        after = [engine_greedy(w) for w in workers]
        assert after[0] != before[0], "the push did not change the engine's output"
        assert after[0][:4] == learner[:4] and after[1][:4] == learner[:4], (after, learner)

        # Killed between pushes: Ray restarts it on the base weights; it rejoins and is verified.
        old_pid = ray.get(workers[1].ready.remote())["pid"]
        ray.kill(workers[1], no_restart=False)
        deadline = time.monotonic() + 300
        while True:  # until the restarted process answers (the old one may answer once more while dying)
            try:
                if ray.get(workers[1].ready.remote(), timeout=10)["pid"] != old_pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "rollout actor not restarted"
            time.sleep(2)
        assert ray.get(workers[1].get_weight_version.remote()) == 0
        # The next push finds it outside the group (restarted, unnoticed): it is left out, the group re-formed
        # without it (rollout-0's open update closed first) and rollout-0 still gets the push, verified.
        group.train_step(samples, 4)
        stats = sync.push(group, workers, 2)
        assert stats["failed_workers"] == [1] and stats["weight_verified"] == 1.0, stats
        assert ray.get([w.get_weight_version.remote() for w in workers]) == [2, 0]
        sync.rejoin(group, workers, workers[1], 2)  # what the rollout pool does before the next rollout
        assert ray.get(workers[1].get_weight_version.remote()) == 2
        learner = group.greedy_generate(prompt, probe["image"], 8)
        assert engine_greedy(workers[1])[:4] == learner[:4] == engine_greedy(workers[0])[:4]
        group.train_step(samples, 4)
        assert sync.push(group, workers, 3)["weight_verified"] == 1.0

        # Gone for good: the push goes on without it, within its timeout, and says which one it left out.
        ray.kill(workers[1], no_restart=True)
        sync.timeout_s = 20.0
        t0 = time.monotonic()
        stats = sync.push(group, workers, 4)
        assert stats["failed_workers"] == [1] and stats["weight_verified"] == 1.0, stats
        assert ray.get(workers[0].get_weight_version.remote()) == 4
        assert time.monotonic() - t0 < 90
    finally:
        group.shutdown()
