"""The tiny base a run starts from, built once and cached: random init, then (if configured)
perception pretraining on captions.

The build goes into a staging sibling and is renamed into place when whole, so an
interrupted build (random weights, pretraining not finished) is never taken for a
finished one. A cached base is reused only if it was built with the configured
pretraining settings; otherwise the run stops and says what differs.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipelines.errors import UserError
from pipelines.models.pretrain import pretrain_captioning, pretrained_settings
from pipelines.models.tiny import build_tiny_model

log = logging.getLogger(__name__)
PRETRAIN_KEYS = ("seed", "per_cell", "steps", "batch_size", "lr", "reading", "text_reading")


def wanted_pretrain(pre) -> dict | None:
    return {k: getattr(pre, k) for k in PRETRAIN_KEYS} if pre.enabled else None


def check_cached_base(path: Path, pre) -> None:
    """Refuse a cached model whose pretraining differs from ``model.pretrain`` (a random one included)."""
    wanted, built = wanted_pretrain(pre), pretrained_settings(path)
    if wanted is None:
        return  # no pretraining asked for: any model the user points at is theirs
    # A base built before ``reading`` or ``text_reading`` existed had none.
    got = {k: built.get(k, 0.0 if "reading" in k else None) for k in PRETRAIN_KEYS} if built else None
    if got != wanted:
        what = "without caption pretraining" if built is None else f"with pretraining {got}"
        raise UserError(f"the model in {path} was built {what}; model.pretrain asks for {wanted}. "
                        f"Delete {path} to rebuild it, or set model.path to a new directory.")


def build_base(path: str | Path, tiny, pre, *, min_pixels: int, max_pixels: int, progress: bool = True,
               check_per_cell: int = 2) -> Path:
    """Build the tiny model (and pretrain it if ``pre.enabled``) into ``path``, atomically."""
    path = Path(path)
    staging = path.with_name(path.name + ".building")
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted build
    build_tiny_model(staging, tiny, min_pixels, max_pixels)
    if pre.enabled:
        log.info("caption pretraining of the tiny base: %d steps of %d (pool: %d images per cell)",
                 pre.steps, pre.batch_size, pre.per_cell)
        pretrain_captioning(staging, seed=pre.seed, per_cell=pre.per_cell, steps=pre.steps,
                            batch_size=pre.batch_size, lr=pre.lr, progress=progress, check_per_cell=check_per_cell,
                            reading=pre.reading, text_reading=pre.text_reading)
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return path
