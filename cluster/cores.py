"""Which CPU cores each actor computes on, when rollout and learner share one machine's CPUs.

Ray gives an actor threads by its nominal CPU share (OMP_NUM_THREADS = num_cpus), which
on a CPU-only machine leaves most cores idle in the synchronous loop: there the phases
take turns, so each phase should use every core (the rollout actors split them, each
learner rank takes its share of all of them). In async mode both run at once, so the
cores are split: rollout actors on one set, learner ranks on the other, never the same
core, and each process runs as many threads as it has cores.
"""
from __future__ import annotations

from dataclasses import dataclass

# The env var that tells an actor its cores ("0-3" or "0,2"): set by the driver, read by the actor.
CORES_ENV = "MEDR1_CORES"


@dataclass(frozen=True)
class CorePlan:
    rollout: list[list[int]]  # cores of each rollout actor
    learner: list[list[int]]  # cores of each learner rank
    overlapped: bool  # True: rollout and learner cores are disjoint (async mode)


def split(cores: list[int], parts: int) -> list[list[int]]:
    """``cores`` in ``parts`` contiguous shares (sizes differ by at most one); with more parts
    than cores, parts share cores round-robin (each still gets one)."""
    if parts <= 0:
        return []
    if not cores:
        raise ValueError("no cores to split")
    if parts >= len(cores):
        return [[cores[i % len(cores)]] for i in range(parts)]
    base, extra = divmod(len(cores), parts)
    out, start = [], 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append(cores[start:start + n])
        start += n
    return out


def plan_cores(cores: list[int], rollout_workers: int, learner_workers: int, *, overlap: bool,
               rollout_cores: int = 0) -> CorePlan:
    """The cores of every rollout actor and learner rank on one machine whose usable cores are ``cores``.

    ``overlap=False`` (the synchronous loop): each role spreads over every core, since only
    one role computes at a time. ``overlap=True`` (async mode): the first ``rollout_cores``
    cores (0: half, rounded down, at least one) go to the rollout actors, the rest to the
    learner ranks; with a single core both roles keep it (nothing to split).
    """
    every = sorted(set(cores))
    if not every:
        raise ValueError("no cores to plan")
    if not overlap or len(every) == 1:
        return CorePlan(split(every, rollout_workers), split(every, learner_workers), overlapped=False)
    k = rollout_cores or max(1, len(every) // 2)
    if not 1 <= k < len(every):
        raise ValueError(f"rollout_cores={rollout_cores} must leave at least one of the {len(every)} cores to each "
                         f"side (1..{len(every) - 1}, or 0 for half)")
    return CorePlan(split(every[:k], rollout_workers), split(every[k:], learner_workers), overlapped=True)


def cores_text(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5": the form vLLM's VLLM_CPU_OMP_THREADS_BIND and ``taskset`` read."""
    parts, run = [], []
    for c in sorted(set(cores)):
        if run and c != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(c)
    if run:
        parts.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts)


def parse_cores(text: str) -> list[int]:
    """"0-2,5" -> [0, 1, 2, 5]; a clear error on anything else."""
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad core list {text!r}: {part!r} is not N or N-M") from None
        if a < 0 or b < a:
            raise ValueError(f"bad core list {text!r}: {part!r} is not an increasing range of core numbers")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError(f"bad core list {text!r}: no cores")
    return sorted(set(out))
