"""Everything ``medr1 submit`` checks and builds before talking to the cluster (no Ray needed):
the config loads with the overrides, ``trainer.output_dir`` will outlive the job, the
paths the job needs are uploaded or absolute, and the GPU flags agree with the config.

A relative ``trainer.output_dir`` would resolve inside the job's unpacked copy of
the working dir (temporary, node-local, garbage-collected), so it is refused unless
``--storage-path`` gives an absolute (shared) directory to put the run under. An
absolute output dir inside the uploaded tree is added to the excludes so that
checkpoints are never uploaded by the next submission.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from cluster.errors import JobsError
from cluster.jobs import Submission, build_entrypoint
from cluster.upload import (DEFAULT_EXCLUDES, DEFAULT_MAX_UPLOAD_MIB, build_runtime_env, check_no_secrets,
                            check_working_dir, is_excluded)
from pipelines.config import load_config, resolve_config_path


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _config_in_working_dir(config: str, working_dir: Path) -> str:
    path = resolve_config_path(config)
    if not _is_within(path, working_dir):
        raise JobsError(f"config {path} is outside the working dir {working_dir.resolve()} and would not be "
                        "uploaded: copy it into the working dir (e.g. configs/) or pass --working-dir")
    return Path(path).resolve().relative_to(working_dir.resolve()).as_posix()


def prepare_submission(config: str, overrides: Optional[list[str]] = None, *, working_dir: str | Path = ".",
                       storage_path: Optional[str] = None, gpu: bool = False, install: bool = False,
                       env_vars: Optional[dict[str, str]] = None, extra_excludes: Optional[list[str]] = None,
                       max_upload_mib: float = DEFAULT_MAX_UPLOAD_MIB, python: str = "python",
                       check_size: bool = True, allow_secrets: bool = False) -> Submission:
    """Everything ``medr1 submit`` checks and builds before talking to the cluster (no Ray needed)."""
    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise JobsError(f"working dir '{working_dir}' is not a directory")
    if not (wd / "pipelines" / "cli" / "main.py").is_file():
        raise JobsError(f"working dir {wd} does not hold this project (no pipelines/cli/main.py): "
                        "the job runs `python -m pipelines.cli`, so upload the repository root")
    overrides = list(overrides or [])
    warnings: list[str] = []
    config_rel = _config_in_working_dir(config, wd)
    cfg = load_config(wd / config_rel, overrides)

    out = str(cfg.trainer.output_dir)
    storage_path = storage_path or cfg.cluster.storage_path
    if storage_path:
        if not os.path.isabs(storage_path) and "://" not in storage_path:
            raise JobsError(f"--storage-path must be an absolute path on storage every node sees (got '{storage_path}')")
        out = os.path.join(storage_path, Path(out).name or "run")
        overrides.append(f"trainer.output_dir={out}")
        cfg = load_config(wd / config_rel, overrides)
    elif not os.path.isabs(out):
        raise JobsError(
            f"trainer.output_dir '{out}' is relative: in a job it resolves inside the job's unpacked copy of the "
            "working dir, which is temporary and local to one node, so checkpoints and metrics would be lost. "
            f"Give an absolute path on shared storage (trainer.output_dir=/shared/medr1/runs/{Path(out).name}) "
            "or --storage-path /shared/medr1/runs.")

    excludes = list(DEFAULT_EXCLUDES) + list(extra_excludes or [])
    if _is_within(Path(out), wd):
        rel = Path(out).resolve().relative_to(wd).as_posix()
        excludes.append(f"/{rel}")
        warnings.append(f"trainer.output_dir {out} is inside the working dir; it is excluded from the upload")

    for key, path, needed in (("model.path", cfg.model.path, not cfg.model.build_tiny_if_missing),
                              ("data.prepared_dir", cfg.data.prepared_dir, cfg.data.source == "prepared")):
        p = str(path)
        if needed and not os.path.isabs(p) and "://" not in p and is_excluded(wd, p, excludes):
            warnings.append(f"{key} '{p}' is relative and excluded from the upload: the job will not find it; "
                            "use an absolute path on shared storage")
    if gpu and float(cfg.rollout.resources_per_worker.num_gpus) <= 0:
        warnings.append("--gpu given but rollout.resources_per_worker.num_gpus is 0: vLLM will run on the CPU")
    if not gpu and (float(cfg.rollout.resources_per_worker.num_gpus) > 0 or float(cfg.learner.resources_per_worker.num_gpus) > 0):
        warnings.append("the config asks for GPUs but --gpu was not given: the job gets the CPU vLLM env vars")

    upload = check_working_dir(wd, excludes, max_upload_mib, allow_secrets) if check_size else None
    if not check_size and not allow_secrets:
        check_no_secrets(wd, excludes)
    rt = build_runtime_env(wd, gpu=gpu, install=install, env_vars=env_vars, excludes=excludes)
    return Submission(entrypoint=build_entrypoint(config_rel, overrides, python), runtime_env=rt,
                      overrides=overrides, config_path=config_rel, upload=upload, warnings=warnings, cfg=cfg)
