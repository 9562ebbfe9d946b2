"""The data cursor (pipelines/data/cursor.py): each epoch a permutation drawn from (seed, epoch),
batches that cross epochs without dropping or repeating a record, and a resume from (epoch,
position) that continues exactly where an uninterrupted pass would be. The ledger and exact resume
both rest on this schedule."""
from collections import Counter

import pytest

from pipelines.data.cursor import DataCursor


def batches(c: DataCursor, k: int) -> list[list[int]]:
    return [c.next_batch() for _ in range(k)]


def epochs(n: int, seed: int, count: int) -> list[list[int]]:
    c = DataCursor(n, n, seed=seed)
    return batches(c, count)  # batch size n from position 0: one batch per epoch


def test_every_epoch_is_a_permutation_and_epochs_differ():
    e = epochs(40, seed=3, count=3)
    assert all(sorted(x) == list(range(40)) for x in e)
    assert e[0] != e[1] and e[1] != e[2] and e[0] != e[2]  # a fresh order per epoch, not one order reused


def test_the_order_depends_on_the_seed_and_is_reproducible():
    assert epochs(40, seed=3, count=2) == epochs(40, seed=3, count=2)
    assert epochs(40, seed=3, count=1) != epochs(40, seed=4, count=1)
    assert epochs(40, seed=0, count=1)[0] != list(range(40))


def test_no_shuffle_is_the_file_order():
    c = DataCursor(5, 3, shuffle=False)
    assert batches(c, 4) == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]


@pytest.mark.parametrize("n, bs", [(10, 3), (7, 7), (5, 8)])
def test_batches_cross_epochs_without_dropping_or_repeating(n, bs):
    c = DataCursor(n, bs, seed=1)
    k = 4 * n  # bs * k records: a whole number of epochs
    seen = [i for b in batches(c, k) for i in b]
    assert len(seen) == bs * k and all(len(b) == bs for b in batches(DataCursor(n, bs, seed=1), k))
    assert Counter(seen) == Counter({i: bs * k // n for i in range(n)})
    # and each epoch's slice of the stream is exactly its own permutation
    per_epoch = [seen[e * n:(e + 1) * n] for e in range(bs * k // n)]
    assert per_epoch[:3] == epochs(n, seed=1, count=3)


@pytest.mark.parametrize("stop", [1, 3, 4, 9])
def test_resume_from_any_point_continues_the_uninterrupted_stream(stop):
    whole = DataCursor(7, 3, seed=5)
    stream = batches(whole, 12)
    first = DataCursor(7, 3, seed=5)
    batches(first, stop)
    resumed = DataCursor.from_dict(first.to_dict(), 7, 3, seed=5)
    assert resumed.to_dict()["epoch"] == first.state.epoch
    assert batches(resumed, 12 - stop) == stream[stop:]


def test_an_empty_split_is_refused():
    with pytest.raises(ValueError, match="empty"):
        DataCursor(0, 4)
