"""Splitting a batch over actors: the one rule every group call uses."""
from __future__ import annotations


def contiguous_shards(n_items: int, n_shards: int, *, unit: int = 1,
                      keep_empty: bool = False) -> list[tuple[int, int]]:
    """[start, stop) ranges over ``n_items``: contiguous, sizes differing by at most one unit.

    ``unit`` > 1 keeps runs of ``unit`` items together (a GRPO group on one learner
    rank) when it divides ``n_items`` into at least ``n_shards`` runs; otherwise items
    are split one by one. ``keep_empty`` returns exactly ``n_shards`` ranges, empty ones
    included (every rank of a collective step must be called); by default empty ranges
    are dropped.
    """
    n_shards = max(1, n_shards)
    if unit < 1 or n_items % unit or n_items // unit < n_shards:
        unit = 1
    size, extra = divmod(n_items // unit, n_shards)
    out, start = [], 0
    for i in range(n_shards):
        stop = start + (size + (1 if i < extra else 0)) * unit
        if keep_empty or stop > start:
            out.append((start, stop))
        start = stop
    return out
