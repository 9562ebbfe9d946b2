"""Run-wide provenance every trace row carries: which code, which config, which data."""
from __future__ import annotations

import functools
import hashlib
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

from pipelines.config import to_yaml

_REPO = Path(__file__).resolve().parents[2]


def new_run_id() -> str:
    """Unique per run: output directories are often named alike (``run``, ``eval``)."""
    return uuid.uuid4().hex


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``medr1-ray <version>`` plus ``git <commit>`` (``+dirty`` with uncommitted changes) when run from a checkout."""
    try:
        version = metadata.version("medr1-ray")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out = f"medr1-ray {version}"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if commit:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            out += f" git {commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout, or no git: the package version alone
    return out


def config_sha256(cfg) -> str:
    """SHA-256 of the resolved config as YAML (the text ``medr1 train --dry-run`` prints)."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()
