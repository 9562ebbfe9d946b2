"""A resumable, seeded pass over the training records.

Each epoch is a fresh permutation drawn from (seed, epoch); the cursor is just
(epoch, position), so a checkpoint stores two integers and a resumed run sees
the same batches in the same order as an uninterrupted one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class CursorState:
    epoch: int = 0
    position: int = 0


class DataCursor:
    def __init__(self, num_records: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 state: CursorState | None = None):
        if num_records < 1:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed, self.shuffle = num_records, batch_size, seed, shuffle
        self.state = state or CursorState()
        self._order = self._permutation(self.state.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        """Indices of the next batch; crosses epoch boundaries without dropping records."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.state.position >= self.n:
                self.state = CursorState(self.state.epoch + 1, 0)
                self._order = self._permutation(self.state.epoch)
            take = min(self.batch_size - len(out), self.n - self.state.position)
            out.extend(self._order[self.state.position:self.state.position + take])
            self.state.position += take
        return out

    def to_dict(self) -> dict:
        return {"epoch": self.state.epoch, "position": self.state.position}

    @classmethod
    def from_dict(cls, d: dict, num_records: int, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        return cls(num_records, batch_size, seed=seed, shuffle=shuffle,
                   state=CursorState(int(d["epoch"]), int(d["position"])))
