"""DAPO's overlong penalty and truncation flag (pipelines/training/overlong.py), by hand."""
from __future__ import annotations

import pytest

from pipelines.training.overlong import add_overlong_penalty, is_truncated, overlong_penalty


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (12, 0.0),  # up to L_max - L_b = 16 - 4 = 12: no penalty
    (13, -0.25), (14, -0.5), (15, -0.75),  # (12 - |y|) / 4
    (16, -1.0),  # at the limit
    (20, -1.0),  # past it (cannot happen with vLLM's max_tokens, still bounded)
])
def test_soft_overlong_penalty(length, expected):
    assert overlong_penalty(length, max_tokens=16, buffer=4) == pytest.approx(expected)


def test_penalty_factor_and_off_switch():
    assert overlong_penalty(14, 16, 4, factor=0.5) == pytest.approx(-0.25)
    assert overlong_penalty(16, 16, 0) == 0.0  # buffer 0: off
    assert overlong_penalty(1, 16, 16) == pytest.approx(-1 / 16)  # buffer = whole budget: from the first token


def test_is_truncated_reads_finish_reason():
    assert is_truncated({"finish_reason": "length"})
    assert not is_truncated({"finish_reason": "stop"})
    assert not is_truncated({})


def test_add_overlong_penalty_to_scores_in_place():
    scores = [{"total": 2.0, "components": {"format": 1.0, "accuracy": 1.0}},
              {"total": 1.0, "components": {"format": 1.0, "accuracy": 0.0}}]
    comps = [{"token_ids": [1] * 10}, {"token_ids": [1] * 15, "finish_reason": "length"}]
    add_overlong_penalty(scores, comps, max_tokens=16, buffer=4, factor=2.0)
    assert scores[0] == {"total": 2.0, "components": {"format": 1.0, "accuracy": 1.0, "overlong_penalty": 0.0}}
    # 15 tokens: 2.0 * (12 - 15) / 4 = -1.5
    assert scores[1]["total"] == pytest.approx(-0.5) and scores[1]["components"]["overlong_penalty"] == -1.5


def test_add_overlong_penalty_off_leaves_scores_alone():
    scores = [{"total": 1.0, "components": {"format": 1.0}}]
    add_overlong_penalty(scores, [{"token_ids": [1] * 16}], max_tokens=16, buffer=0, factor=1.0)
    assert scores == [{"total": 1.0, "components": {"format": 1.0}}]
    with pytest.raises(ValueError):
        add_overlong_penalty(scores, [], max_tokens=16, buffer=4, factor=1.0)
