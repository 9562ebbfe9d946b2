"""DAPO dynamic sampling's selection (pipelines/training/dynamic_sampling.py), by hand."""
from __future__ import annotations

import pytest

from pipelines.training.dynamic_sampling import fill_live_groups, is_live, select_live


def test_is_live_is_unequal_rewards():
    assert is_live([1.0, 0.0, 0.0, 0.0])
    assert not is_live([2.0, 2.0, 2.0])
    assert is_live([1.0, 1.0 + 1e-9])  # any difference is a signal, as in dead_group_mask
    assert not is_live([])


def test_select_live_keeps_the_first_target_live_groups_in_order():
    assert select_live([False, True, True, False, True], 2) == [1, 2]
    assert select_live([False, True, False], 4) == [1]
    assert select_live([False, False], 1) == []


class Rounds:
    """Rounds of groups (reward lists) handed out in turn, recording the try numbers asked for."""

    def __init__(self, *rounds):
        self.rounds, self.asked = list(rounds), []

    def __call__(self, try_number):
        self.asked.append(try_number)
        return self.rounds[try_number - 1]


def test_resamples_until_enough_live_groups_then_truncates():
    # Batch of 4 with one live group; target 4. Round 1 adds 2 live of 4, round 2 adds 2 live of 4:
    # 5 live >= 4, stop. Keep the first 4 live in sampling order: indices 1, 4, 6, 9.
    first = [[1, 1], [1, 0], [0, 0], [1, 1]]
    more = Rounds([[0, 1], [0, 0], [1, 0], [0, 0]], [[1, 1], [0, 1], [1, 0], [2, 2]], [[1, 0]] * 4)
    f = fill_live_groups(first, lambda g: g, more, target=4, max_tries=5)
    assert more.asked == [1, 2]
    assert len(f.groups) == 12 and f.groups[:4] == first
    assert f.keep == [1, 4, 6, 9]
    assert f.trains() == [i in (1, 4, 6, 9) for i in range(12)]
    assert f.metrics() == {"dynamic_sampling_tries": 2, "groups_resampled": 8, "groups_live": 5,
                           "groups_kept": 4, "groups_short": 0}


def test_stops_at_max_tries_and_trains_what_it_has():
    more = Rounds([[0, 0]], [[1, 1]], [[0, 1]])
    f = fill_live_groups([[1, 1], [0, 1]], lambda g: g, more, target=3, max_tries=2)
    assert more.asked == [1, 2]  # the third round is never drawn
    assert f.keep == [1]
    assert f.metrics() == {"dynamic_sampling_tries": 2, "groups_resampled": 2, "groups_live": 1,
                           "groups_kept": 1, "groups_short": 2}


def test_no_resampling_when_the_batch_is_full_but_dead_groups_still_drop():
    more = Rounds()
    f = fill_live_groups([[1, 0], [1, 1], [0, 1]], lambda g: g, more, target=2, max_tries=3)
    assert more.asked == []
    assert f.keep == [0, 2] and f.metrics()["dynamic_sampling_tries"] == 0
    # max_tries=0: never re-sample, only drop dead groups
    f0 = fill_live_groups([[1, 1], [0, 1]], lambda g: g, Rounds(), target=2, max_tries=0)
    assert f0.keep == [1] and f0.metrics()["groups_short"] == 1


def test_argument_errors():
    with pytest.raises(ValueError):
        fill_live_groups([], lambda g: g, Rounds(), target=0, max_tries=1)
    with pytest.raises(ValueError):
        fill_live_groups([], lambda g: g, Rounds(), target=1, max_tries=-1)
