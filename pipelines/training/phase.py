"""``OUT/phase.json``: which step the driver is on and in which phase (sampling, scoring,
learning, pushing, saving, evaluating), rewritten atomically at each change.

A run that seems stuck says where (``cat OUT/phase.json``), and ``bench/chaos.py`` times its
kills from it. Best effort: a marker that cannot be written never stops the run."""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines.training.metrics import timer

log = logging.getLogger(__name__)

PHASE_FILE = "phase.json"
PHASES = ("sampling", "scoring", "learning", "pushing", "saving", "evaluating", "done")
_TIMED = {"time_rollout": "sampling", "time_resample": "sampling", "time_reward": "scoring",
          "time_learner": "learning", "time_push": "pushing"}  # the step's timers and the phase each one is


class PhaseMarker:
    def __init__(self, out: str | Path):
        self.path = Path(out) / PHASE_FILE
        self._warned = False

    def enter(self, step: int, phase: str) -> None:
        """``step``: 0-based, the step being run (the one whose rows carry this step number)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        tmp = self.path.with_name(f".{PHASE_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"step": int(step), "phase": phase, "pid": os.getpid(), "time": time.time()}))
            os.replace(tmp, self.path)  # a reader never sees half a marker
        except OSError as e:
            if not self._warned:
                log.warning("cannot write %s (%s); the run goes on without a phase marker", self.path, e)
                self._warned = True

    @contextmanager
    def timed(self, timings: dict[str, float], name: str, step: int) -> Iterator[None]:
        """``metrics.timer`` for one of a step's phases, entering the phase first."""
        self.enter(step, _TIMED[name])
        with timer(timings, name):
            yield


def read_phase(out: str | Path) -> dict | None:
    """The marker as last written, or None (no run yet, or it is being replaced)."""
    try:
        return json.loads((Path(out) / PHASE_FILE).read_text())
    except (OSError, ValueError):
        return None
