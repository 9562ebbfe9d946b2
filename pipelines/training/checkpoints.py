"""A run's checkpoints on disk: ``OUT/checkpoints/step_N`` every ``save_every`` steps and
``OUT/checkpoints/final``. Which one ``trainer.resume_from=auto`` continues from, and
pruning to the newest ``trainer.keep_last_n``."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from learner import checkpoint_manifest

log = logging.getLogger(__name__)


def _order(path: Path) -> float:
    """step_N -> N; final -> after every step; anything else is not a checkpoint of the run."""
    if path.name == "final":
        return float("inf")
    number = path.name.removeprefix("step_")
    return float(number) if path.name.startswith("step_") and number.isdigit() else -1.0


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (valid or not)."""
    d = Path(run_dir) / "checkpoints"
    found = [p for p in d.iterdir() if p.is_dir() and _order(p) >= 0] if d.is_dir() else []
    return sorted(found, key=_order)


def latest_valid(run_dir: str | Path) -> Optional[Path]:
    """The newest checkpoint whose files match its manifest; None when there is none."""
    for path in reversed(run_checkpoints(run_dir)):
        try:
            checkpoint_manifest.verify(path)
            return path
        except checkpoint_manifest.CheckpointError as e:
            log.warning("resume_from=auto skips %s: %s", path.name, e)
    return None


def prune(run_dir: str | Path, keep_last_n: int) -> list[Path]:
    """Delete step checkpoints older than the newest ``keep_last_n`` finished ones (``final`` is
    kept). Called after a new checkpoint is sealed, so a crash never leaves fewer than asked.
    Finished means sealed: re-hashing every kept checkpoint at each save would cost more than the save."""
    if keep_last_n < 1:
        return []
    steps = [p for p in run_checkpoints(run_dir) if p.name != "final"]
    sealed = [p for p in steps if checkpoint_manifest.is_sealed(p)]
    if len(sealed) <= keep_last_n:
        return []
    oldest_kept = _order(sealed[-keep_last_n])
    removed = [p for p in steps if _order(p) < oldest_kept]
    for p in removed:
        shutil.rmtree(p)
    return removed
