"""Step-metric helpers of the GRPO loop."""
from __future__ import annotations

import time

import pytest

from pipelines.training.metrics import timer


def test_timer_records_the_block_and_nothing_on_error():
    timings: dict[str, float] = {}
    with timer(timings, "time_rollout"):
        time.sleep(0.01)
    assert list(timings) == ["time_rollout"] and 0.01 <= timings["time_rollout"] < 5
    with pytest.raises(RuntimeError):
        with timer(timings, "time_reward"):
            raise RuntimeError("boom")
    assert "time_reward" not in timings
