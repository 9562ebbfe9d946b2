"""bench/cost_model.py (docs/performance.md's tables): its arithmetic by hand, and its calibration."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("cost_model", REPO / "bench" / "cost_model.py")
cm = importlib.util.module_from_spec(spec)
sys.modules["cost_model"] = cm  # dataclasses look their module up there
spec.loader.exec_module(cm)

M = cm.Model("m", lm_params=1e9, vision_params=1e8, layers=2, kv_heads=1, head_dim=4)
J = cm.Job(prompts=2, group=3, prompt_tokens=100, image_tokens=10, completion_mean=20, completion_max=40)


def test_learner_flops_by_hand():
    # 6 train + 2 recompute + 2 reference = 10 passes; text 2*3*(100+20) = 720 tokens; 2*3*10*4 = 240 patches.
    assert cm.learner_flops(M, J) == pytest.approx(10 * (1e9 * 720 + 1e8 * 240))
    # Shared prefix: prompts once per group: 2*100 + 6*20 = 320 tokens, 2*10*4 = 80 patches.
    assert cm.learner_flops(M, replace(J, shared_prefix=True)) == pytest.approx(10 * (1e9 * 320 + 1e8 * 80))
    assert cm.learner_flops(M, replace(J, reference=False, gradient_checkpointing=False)) == \
        pytest.approx(6 * (1e9 * 720 + 1e8 * 240))


def test_async_step_overlaps_rollout_and_learner_but_not_the_push():
    p = cm.phases(M, J, 2, 6)
    assert p["sync"] == pytest.approx(p["rollout"] + p["learner"] + p["push"] + p["switch"] + p["cpu"])
    assert p["async"] == pytest.approx(max(p["rollout"] + p["cpu"], p["learner"]) + p["push"])
    learner_2x = cm.phases(M, J, 2, 3)["learner"]
    assert learner_2x == pytest.approx(2 * p["learner"])  # half the learner GPUs, twice the time


def test_calibration_lands_inside_the_published_easyr1_range():
    e = cm.calibrate()
    easy = cm.phases(cm.QWEN25VL_7B, cm.EASYR1, 8, 8, e=e, colocated=True)
    assert 120 <= easy["sync"] <= 145 and 0.05 < e.train_mfu < 0.9
