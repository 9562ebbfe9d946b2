"""A run's checkpoints on disk: ``OUT/checkpoints/step_N`` every ``save_every`` steps and
``OUT/checkpoints/final``. Which one ``trainer.resume_from=auto`` continues from, and
pruning to the newest ``trainer.keep_last_n``. Saves are atomic (``learner.checkpoint_atomic``):
what a crashed save leaves is never a checkpoint here, and ``tidy`` clears it."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from learner import checkpoint_atomic, checkpoint_manifest
from pipelines.errors import UserError

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


def tidy(run_dir: str | Path) -> list[Path]:
    """Before a save or an automatic resume: finish or remove what crashed saves left in ``OUT/checkpoints``."""
    removed = checkpoint_atomic.recover(Path(run_dir) / "checkpoints")
    for p in removed:
        log.warning("removed %s, left by a save that did not finish", p)
    return removed


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


# What a rerun may change and still be the same run: where and how long it runs, how it logs and evaluates.
_MAY_CHANGE = ("trainer.output_dir", "trainer.resume_from", "trainer.total_steps", "trainer.save_every",
               "trainer.keep_last_n", "trainer.eval_every", "logging.", "cluster.", "eval.", "weight_sync.",
               "rollout.num_workers", "rollout.resources_per_worker", "rollout.gpu_memory_utilization",
               "learner.resources_per_worker")


def run_settings(cfg_dict: dict) -> dict[str, str]:
    """The settings that decide a run's trajectory (flattened ``to_dict`` of the config), stored in its checkpoints."""
    flat: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = json.dumps(node, sort_keys=True, default=str)
    walk("", cfg_dict)
    return {k: v for k, v in flat.items() if not k.startswith(_MAY_CHANGE)}


def saved_state(checkpoint: str | Path) -> dict:
    """The client state a checkpoint was saved with (``deepspeed/medr1_state.json``); {} for older checkpoints."""
    p = Path(checkpoint) / "deepspeed" / "medr1_state.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def changed_settings(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """``key: then -> now`` for every trajectory setting that differs."""
    return [f"{k}: {saved.get(k, '(unset)')} -> {now.get(k, '(unset)')}"
            for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]


def refuse_other_settings(checkpoint: Path, now: dict[str, str]) -> None:
    """``resume_from=auto`` continues only the same run: a checkpoint saved with other settings is refused."""
    saved = saved_state(checkpoint).get("settings")
    changed = changed_settings(saved, now) if saved else []
    if changed:
        raise UserError(f"trainer.resume_from=auto would continue {checkpoint}, saved with other settings: "
                        f"{'; '.join(changed[:8])}. Use another trainer.output_dir for a new run, or name the "
                        "checkpoint in trainer.resume_from to continue it with the new settings.")


def resolve_resume(resume_from: Optional[str], run_dir: str | Path, cfg_dict: dict) -> Optional[str]:
    """The checkpoint a run starts from, checked before anything starts.

    ``auto``: the newest valid checkpoint of ``run_dir`` (leftovers of interrupted saves tidied
    first), refused if it was trained with other settings; None when there is none. A named
    checkpoint that is partial or corrupted is refused, naming the file."""
    if resume_from == "auto":
        tidy(run_dir)
        found = latest_valid(run_dir)
        if found:  # continuing by default is safe only for the same run: other settings are refused
            refuse_other_settings(found, run_settings(cfg_dict))
        log.info("resume_from=auto: %s", f"continuing from {found}" if found else "no checkpoint; starting fresh")
        return str(found) if found else None
    if resume_from:
        try:
            checkpoint_manifest.verify(resume_from)
        except checkpoint_manifest.CheckpointError as e:
            raise UserError(f"trainer.resume_from: {e}") from None
    return resume_from or None
