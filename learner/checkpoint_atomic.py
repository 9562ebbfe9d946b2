"""A checkpoint appears whole or not at all.

A save writes into a staging sibling ``<name>.tmp-<stamp>``, syncs and seals it (its
``MANIFEST.json`` written last), then renames it to ``<name>``. An existing ``<name>`` is
first renamed to ``<name>.old-<stamp>`` and deleted only after the new one is in place, so
at every instant the directory holds a complete checkpoint under its name, or none and a
sealed leftover that ``recover`` puts back. A crash or a full disk mid-save leaves only a
staging leftover, which no reader mistakes for a checkpoint (its name is not ``step_N`` or
``final``) and the next save of the directory removes."""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from learner import checkpoint_manifest

log = logging.getLogger(__name__)

STAGING, RETIRED = ".tmp-", ".old-"


class CheckpointWriteError(OSError):
    """A save that failed (disk full, permissions, ...); the previous checkpoints are untouched."""


def staging_dir(target: str | Path, stamp: str) -> Path:
    target = Path(target)
    return target.with_name(f"{target.name}{STAGING}{stamp}")


def leftover_of(path: Path) -> str | None:
    """The checkpoint name a staging or retired leftover belongs to; None for anything else."""
    for marker in (STAGING, RETIRED):
        name, sep, stamp = path.name.rpartition(marker)
        if sep and name and stamp:
            return name
    return None


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(parent: str | Path, name: str | None = None) -> list[Path]:
    """Finish or undo saves that stopped part-way in ``parent`` (only those of ``name`` if given).

    A checkpoint missing under its name while a sealed leftover of it exists (a crash between
    the two renames of ``publish``) gets that leftover back, the newer staging one first.
    Every other leftover is deleted. Returns what was deleted."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    leftovers = sorted((p for p in parent.iterdir() if p.is_dir() and leftover_of(p)),
                       key=lambda p: (RETIRED in p.name, p.name))  # staging (newest data) first
    removed = []
    for p in leftovers:
        owner = leftover_of(p)
        if name is not None and owner != name:
            continue
        target = parent / owner
        if not target.exists() and checkpoint_manifest.is_sealed(p):
            p.rename(target)
            fsync_dir(parent)
            log.warning("checkpoint %s restored from %s (a save stopped between its renames)", target, p.name)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def publish(staged: str | Path, target: str | Path) -> Path:
    """Rename a sealed staging directory to ``target``, replacing an older ``target`` safely."""
    staged, target = Path(staged), Path(target)
    if not checkpoint_manifest.is_sealed(staged):
        raise checkpoint_manifest.CheckpointError(f"refusing to publish {staged}: it is not sealed")
    retired = None
    if target.exists():
        _carry_over(target, staged)
        retired = target.with_name(f"{target.name}{RETIRED}{staged.name.rpartition(STAGING)[2]}")
        target.rename(retired)
    staged.rename(target)
    fsync_dir(target.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return target


def _carry_over(old: Path, staged: Path) -> None:
    """Keep what else lives in a replaced directory (e.g. an SFT run's ``sft_metrics.jsonl`` beside its
    checkpoint): hard-linked into the new one, so the old directory stays whole until the swap."""
    for entry in old.iterdir():
        dst = staged / entry.name
        if dst.exists() or entry.name.startswith(f".{checkpoint_manifest.MANIFEST}"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(entry, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def write_failed(target: str | Path, staged: str | Path, error: BaseException, *, rank: int | None = None,
                 remove: bool = True, why: str | None = None) -> CheckpointWriteError:
    """Remove a failed save's staging directory (freeing the space; ``remove``) and say what happened, naming
    the path and, in a multi-rank save, the rank that failed (``why``: its error, as it reported it).

    torch reports a full disk as an opaque RuntimeError ("unexpected pos ..."), so the free space
    left when the save failed is measured and named too."""
    staged = Path(staged)
    try:
        free_mib = shutil.disk_usage(staged if staged.exists() else Path(target).parent).free / 2**20
    except OSError:
        free_mib = float("nan")
    if remove:
        shutil.rmtree(staged, ignore_errors=True)
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC or free_mib < 64:
        why = f"the disk is full: {free_mib:.0f} MiB free when it failed" + (f"; {why}" if why else "")
    elif why is None:
        why = f"{type(error).__name__}: {error}"
    where = f" on rank {rank}" if rank is not None else ""
    return CheckpointWriteError(code or errno.EIO, f"saving checkpoint {target} failed{where} ({why}); nothing was "
                                "written in its place and the previous checkpoints are untouched")
