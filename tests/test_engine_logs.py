"""vLLM's per-push log lines (a warning per tied or buffer-only layer, the reload time, the
cache reset) are shown the first time only, so a long run's log stays readable."""
from __future__ import annotations

import logging

from actors.vllm_engine import quiet_per_push_logs


def test_per_push_lines_are_shown_once(caplog):
    quiet_per_push_logs()
    quiet_per_push_logs()  # idempotent: one filter per logger
    layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    inplace = logging.getLogger("vllm.model_executor.model_loader.reload.inplace")
    cpu = logging.getLogger("vllm.v1.worker.cpu_worker")
    other = logging.getLogger("vllm.engine.other")
    with caplog.at_level(logging.INFO):
        for step, took in enumerate((0.33, 0.06, 0.12)):
            layerwise.propagate = inplace.propagate = cpu.propagate = other.propagate = True  # caplog sees them
            layerwise.warning("%s: Failed to load weights", "ParallelLMHead")
            layerwise.warning("%s: Failed to load weights", "RotaryEmbedding")
            inplace.info("Reloading and processing weights took %.2f seconds", took)
            for _ in range(16):  # once per image on CPU
                cpu.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding")
            other.warning("step %d went wrong", step)  # not a per-push logger: every line kept
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("ParallelLMHead: Failed to load weights") == 1
    assert lines.count("RotaryEmbedding: Failed to load weights") == 1
    assert [ln for ln in lines if ln.startswith("Reloading")] == ["Reloading and processing weights took 0.33 seconds"]
    assert sum(ln.startswith("CPU backend") for ln in lines) == 1
    assert [ln for ln in lines if ln.startswith("step")] == ["step 0 went wrong", "step 1 went wrong", "step 2 went wrong"]
