"""A rollout actor SIGKILLed in the middle of a rollout: Ray restarts it, it is
brought up to the current weights, its prompts are re-issued, and every prompt
comes back exactly once."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytestmark = pytest.mark.slow


def test_killed_rollout_actor_is_restarted_and_its_prompts_reissued(tiny_model_dir, ray_session):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from actors.rollout import RolloutPool, create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from pipelines.prompts import chat_prompt
    from tests.conftest import REPO, TEST_MAX_PIXELS, noise_png

    ray = ray_session
    engine_kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                         max_pixels=TEST_MAX_PIXELS, seed=0)
    env = [{**cpu_engine_env(str(i % (os.cpu_count() or 1))), "PYTHONPATH": str(REPO)} for i in range(2)]
    workers = create_rollout_workers(2, engine_kwargs, num_cpus=0.5, env_vars=env, max_restarts=1,
                                     name_prefix="fault-rollout")
    try:
        ready = wait_ready(workers)
        victim_pid = ready[0]["pid"]
        weights = load_file(str(tiny_model_dir / "model.safetensors"))
        ray.get([w.load_weights.remote(weights, 1) for w in workers])  # "current" weights are version 1
        caught_up = []

        def catch_up(worker):
            ray.get(worker.load_weights.remote(weights, 1))
            caught_up.append(True)

        pool = RolloutPool(workers, on_restart=catch_up)
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        prompt = chat_prompt(tok, {"question": "Which organ?", "options": ["Brain", "Lung"]})
        prompts = [{"id": f"p{i}", "prompt": prompt, "image": noise_png(i)} for i in range(8)]

        # SIGKILL rollout-0's process while the rollout is running.
        timer = threading.Timer(1.0, lambda: os.kill(victim_pid, signal.SIGKILL))
        timer.start()
        t0 = time.monotonic()
        outcome = pool.generate(prompts, {"n": 4, "temperature": 1.0, "max_tokens": 400, "seed": 3})
        timer.join()
        assert time.monotonic() - t0 > 1.0, "the rollout ended before the kill; make it longer"

        assert [r["prompt_id"] for r in outcome.results] == [p["id"] for p in prompts], "each prompt exactly once"
        assert all(r["error"] is None and len(r["completions"]) == 4 for r in outcome.results)
        assert pool.restarts == 1 and outcome.reissued == 4
        pool.heal()  # the next rollout does this first
        assert caught_up, "the restarted actor must be given the current weights"
        assert ray.get(workers[0].get_weight_version.remote()) == 1
        assert all(v == 1 for v in outcome.versions), "re-issued prompts were sampled with the current weights"
        assert ray.get(workers[0].ready.remote())["pid"] != victim_pid
    finally:
        for w in workers:
            ray.kill(w)
