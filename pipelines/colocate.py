"""Colocated mode: rollout engines and learner ranks share the same devices.

The engines sleep while the learner updates (vLLM level 1: weights to host
memory and KV cache dropped; level 2: both dropped), then wake in two stages so
the peak stays low: weights first, the new weights pushed into them, the KV
cache last. On CPU vLLM has no sleep mode; the same calls then only pause and
resume scheduling, so the sequence is exercised everywhere.
"""
from __future__ import annotations

import time
from typing import Callable

import ray


class Colocation:
    def __init__(self, pool, level: int = 1):
        self.pool = pool  # pipelines.rollout.RolloutPool: its worker list is the live one after restarts
        self.level = int(level)

    def sleep(self) -> dict:
        t0 = time.perf_counter()
        out = ray.get([w.sleep.remote(self.level) for w in self.pool.workers])
        return {"sleep_seconds": time.perf_counter() - t0,
                "sleep_frees_memory": float(all(o["frees_memory"] for o in out))}

    def wake_and_push(self, push: Callable[[], dict] | None) -> dict:
        """Wake the weights, run ``push`` (None: no push this step), then wake the KV cache."""
        t0 = time.perf_counter()
        ray.get([w.wake_up.remote(["weights"]) for w in self.pool.workers])
        result = push() if push is not None else {}
        ray.get([w.wake_up.remote(["kv_cache"]) for w in self.pool.workers])
        asleep = ray.get([w.is_sleeping.remote() for w in self.pool.workers])
        if any(asleep):
            raise RuntimeError(f"rollout engines still asleep after wake-up: {asleep}")
        return {**result, "wake_seconds": time.perf_counter() - t0}
