"""Actor roles survive a death mid-call: a reward actor killed while scoring has its shard scored
again, a rollout actor SIGKILLed mid-evaluation has its prompts re-issued; nothing is lost or counted twice."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytestmark = pytest.mark.slow


def test_killed_reward_actor_has_its_batch_rescored(ray_session):
    from actors.reward import RewardActor, score_sharded
    from rewards import combined_scores

    ray = ray_session
    weights = {"format": 1.0, "accuracy_strict": 1.0}
    workers = [RewardActor.options(name=f"fault-reward-{i}", max_restarts=1, num_cpus=0.5).remote(weights)
               for i in range(2)]
    ray.get([w.score.remote(["x"], ["A"]) for w in workers])  # both up
    n = 120_000  # a shard takes seconds to score; the kill comes 0.2 s after it was sent
    texts = [f"<think>t{i}</think><answer>{'AB'[i % 2]}</answer>" if i % 3 else f"no tags {i}" for i in range(n)]
    answers = ["A"] * n
    expected = [{"total": s.total, "components": s.components} for s in combined_scores(texts, answers, weights)]
    stats: dict = {}
    # Soon after the calls are sent: a call the actor has received but not answered fails with it, whether
    # its scoring had begun or not; a later kill raced a fast CI machine that had finished the shard.
    killer = threading.Timer(0.2, lambda: ray.kill(workers[0], no_restart=False))
    killer.start()
    t0 = time.monotonic()
    got = score_sharded(workers, texts, answers, stats=stats)
    killer.join()
    assert time.monotonic() - t0 > 0.2, "scoring ended before the kill; make the batch longer"
    assert stats.get("reward_rescored") == n // 2, "reward-0's shard (the first half) is scored again, once"
    assert got == expected  # every completion once, in order, with the scores it would have had
    for w in workers:
        ray.kill(w, no_restart=True)


def test_rollout_actor_killed_mid_evaluation_has_its_prompts_reissued(tiny_model_dir, ray_session):
    from transformers import AutoTokenizer

    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from pipelines.data.schema import VQARecord
    from pipelines.evaluation.evaluate import evaluate_records
    from tests.conftest import REPO, TEST_MAX_PIXELS, noise_png

    ray = ray_session
    engine_kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                         max_pixels=TEST_MAX_PIXELS, seed=0)
    env = [{**cpu_engine_env(str(i % (os.cpu_count() or 1))), "PYTHONPATH": str(REPO)} for i in range(2)]
    workers = create_rollout_workers(2, engine_kwargs, num_cpus=0.5, env_vars=env, max_restarts=1,
                                     name_prefix="fault-eval")
    try:
        victim_pid = wait_ready(workers)[0]["pid"]
        records = [VQARecord(f"r{i}", noise_png(i), "Which modality is shown?", ["CT", "MRI", "X-ray"],
                             "ABC"[i % 3], "CT", "modality recognition", "test") for i in range(12)]
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        killer = threading.Timer(1.0, lambda: os.kill(victim_pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        res = evaluate_records(workers, records, tokenizer=tok, max_new_tokens=300, prompt_style="think",
                               progress=False)
        killer.join()
        assert time.monotonic() - t0 > 1.0, "the evaluation ended before the kill; make it longer"
        assert res["reissued"] == 6, "rollout-0's shard (6 prompts) is re-issued once"
        assert res["n"] == 12 and res["skipped"]["count"] == 0  # every record scored exactly once
        assert sum(c["n"] for c in res["by_modality"].values()) == 12
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)
