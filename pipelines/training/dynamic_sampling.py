"""DAPO dynamic sampling: fill a step's batch with groups that carry a learning signal.

A group whose G rewards are all equal has zero advantage everywhere: it costs a learner
pass and teaches nothing. With ``grpo.dynamic_sampling`` the loop keeps drawing the next
prompts from the data cursor and sampling them, at most ``grpo.dynamic_sampling_max_tries``
extra rounds, until ``trainer.prompts_per_step`` live groups are in hand; then the first
that many live groups (in sampling order) train and every dead group is dropped. When the
tries run out first, the step trains on the live groups it has (``groups_kept`` below
the target says so). The selection is pure and knows nothing of Ray: the loop passes a
function that samples and scores one more round.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

G = TypeVar("G")


def is_live(rewards: Sequence[float]) -> bool:
    """Some reward differs from another: the rule of ``learner.grpo.dead_group_mask``."""
    return len(rewards) > 0 and max(rewards) != min(rewards)


def select_live(live: Sequence[bool], target: int) -> list[int]:
    """Indices of the groups that train: the first ``target`` live ones, in sampling order."""
    return [i for i, ok in enumerate(live) if ok][:max(target, 0)]


@dataclass
class Filled(Generic[G]):
    groups: list[G]  # every group sampled this step, the first batch's first
    keep: list[int]  # indices into groups of those that train
    live: int  # live groups among all sampled
    tries: int  # extra sampling rounds run
    resampled: int  # groups those rounds added
    target: int

    def trains(self) -> list[bool]:
        keep = set(self.keep)
        return [i in keep for i in range(len(self.groups))]

    def metrics(self) -> dict[str, int]:
        return {"dynamic_sampling_tries": self.tries, "groups_resampled": self.resampled,
                "groups_live": self.live, "groups_kept": len(self.keep),
                "groups_short": self.target - len(self.keep)}


def fill_live_groups(groups: Sequence[G], rewards_of: Callable[[G], Sequence[float]],
                     sample_more: Callable[[int], Sequence[G]], *, target: int, max_tries: int) -> Filled[G]:
    """Call ``sample_more(try_number)`` (1, 2, ...) while fewer than ``target`` groups are live and
    fewer than ``max_tries`` rounds have run; return every group and which of them train."""
    if target < 1 or max_tries < 0:
        raise ValueError(f"need target >= 1 and max_tries >= 0, got {target}, {max_tries}")
    out = list(groups)
    live = [is_live(rewards_of(g)) for g in out]
    tries = 0
    while sum(live) < target and tries < max_tries:
        tries += 1
        more = list(sample_more(tries))
        out += more
        live += [is_live(rewards_of(g)) for g in more]
    return Filled(out, select_live(live, target), sum(live), tries, len(out) - len(groups), target)
