"""An actor's own cores and threads: pinned once when it starts, threads set again when a phase starts.

Ray starts each actor with OMP_NUM_THREADS = its nominal CPU share (1 by default), so
torch in a learner rank computes on one thread even while every other core is idle.
The driver tells each actor its cores (``cluster.cores.CORES_ENV``, from the run's core
plan); the actor pins itself to them (os.sched_setaffinity: threads it starts later
inherit it) and, at the start of each phase, runs torch on that many threads.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from cluster.cores import CORES_ENV, parse_cores


def planned_cores() -> Optional[list[int]]:
    """The cores the driver gave this process, or None (no plan: e.g. a GPU run or a remote cluster)."""
    text = os.environ.get(CORES_ENV, "").strip()
    return parse_cores(text) if text else None


def pin(cores: Optional[list[int]] = None) -> Optional[list[int]]:
    """Pin this process (the calling thread and the threads it starts later) to ``cores`` (default:
    the planned ones); returns the cores pinned to, or None without a plan (nothing changed)."""
    cores = planned_cores() if cores is None else cores
    if not cores:
        return None
    usable = [c for c in cores if c < (os.cpu_count() or 1)] or list(range(os.cpu_count() or 1))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, usable)
    return usable


def phase_threads(cores: Optional[list[int]]) -> int:
    """At the start of a phase: torch runs one thread per core of ``cores`` (what ``pin`` returned).
    Without a plan (None) the thread count stays as Ray and the env set it. Returns the count."""
    if cores:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)  # this call may come on another thread of the actor
        if torch.get_num_threads() != len(cores):
            torch.set_num_threads(len(cores))
    return torch.get_num_threads()
