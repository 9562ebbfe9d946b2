"""Connecting to Ray: a local one-machine cluster by default, or an existing cluster."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Optional

import ray

from cluster.auth import setup_client_auth

log = logging.getLogger(__name__)

# The project root: a local cluster's workers import this project's packages from it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Set by the Ray job manager for a submitted job's entrypoint: the job's runtime env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class ClusterUnreachable(RuntimeError):
    pass


def _submitted_job_runtime_env() -> Optional[dict]:
    """The runtime env of the Ray Job this process is the entrypoint of, or None outside a job."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def is_local(address: Optional[str]) -> bool:
    """True when ``connect(address)`` starts a local one-machine cluster (no address, not inside a job)."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def local_cpu_count(wanted: float = 1.0) -> int:
    """The CPUs a local cluster declares: every core, or as many as the resource plan asks for.

    The phases of a synchronous GRPO step take turns on the cores, so a local run may
    declare more logical CPUs than the machine has rather than refuse its own plan."""
    return max(os.cpu_count() or 1, math.ceil(wanted))


def _tcp_ok(host: str, port: int, timeout: float) -> Optional[OSError]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e


def _check_tcp(target: str, timeout: float) -> None:
    """Fail fast on ``host:port`` that does not accept connections (ray.init would retry for minutes)."""
    hostport = target.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]")
    err = _tcp_ok(host, int(port), timeout)
    if err is not None:
        raise ClusterUnreachable(f"cannot connect to the Ray cluster at '{target}': {host}:{port} does not answer "
                                 f"({err}). Is the head running (`ray status` on it) and the address its GCS port "
                                 f"(6379 by default; ray:// for Ray Client on 10001)?")
    try:  # Ray rewrites a loopback address to this node's IP before connecting
        from ray._private.services import resolve_ip_for_localhost

        real = resolve_ip_for_localhost(host)
    except Exception:
        return
    if real != host and _tcp_ok(real, int(port), timeout) is not None:
        raise ClusterUnreachable(
            f"the Ray cluster at '{target}' listens on {host} only, but Ray connects to a local cluster through "
            f"this node's IP ({real}:{port}), which does not answer: start the head without "
            f"--node-ip-address {host}, or use its node IP in the address")


def connect(address: Optional[str] = None, *, num_cpus: Optional[int] = None, wanted_cpus: float = 1.0,
            dashboard_host: str = "127.0.0.1", env_vars: Optional[dict[str, str]] = None,
            working_dir_on_path: Optional[str] = str(PROJECT_ROOT), connect_timeout_s: float = 5.0) -> dict:
    """Start or join Ray; returns {"address", "dashboard_url", "resources"}.

    Under ``ray job submit`` RAY_ADDRESS is set and the job joins its cluster;
    ``address=None`` otherwise starts a local Ray whose dashboard listens on
    ``dashboard_host`` (loopback unless the user says otherwise).

    Inside a submitted job, the job's runtime env (working dir, env vars) is
    kept: Ray refuses a ``ray.init`` runtime env that sets the same env var
    again, so those keys are left to the job, and PYTHONPATH is not added when
    the job has a working dir (Ray already puts it on the workers' path).

    A local cluster declares ``num_cpus`` if given, else ``local_cpu_count(wanted_cpus)``.
    """
    env = {str(k): str(v) for k, v in (env_vars or {}).items()}
    job_env = _submitted_job_runtime_env()
    if working_dir_on_path and not (job_env and job_env.get("working_dir")):
        # Actors import this project's packages; a local cluster's workers need them on sys.path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (working_dir_on_path, os.environ.get("PYTHONPATH")) if p)
    if job_env:
        taken = set((job_env.get("env_vars") or {}).keys())
        dropped = sorted(k for k in env if k in taken)
        if dropped:
            log.info("keeping the job's own values for %s", ", ".join(dropped))
        env = {k: v for k, v in env.items() if k not in taken}
    runtime_env = {"env_vars": env} if env else None
    explicit = address not in (None, "auto", "local") and not str(address).startswith("ray://")
    if explicit:
        _check_tcp(str(address), connect_timeout_s)  # an unreachable address fails fast, connected or not
    if ray.is_initialized():
        pass  # already connected (a test session, or a caller that set Ray up itself)
    elif is_local(address):
        # address="local": always a fresh one-machine cluster, never one a `ray start` left running.
        num_cpus = num_cpus if num_cpus is not None else local_cpu_count(wanted_cpus)
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host,
                     runtime_env=runtime_env, log_to_driver=True)
        except Exception as e:  # the dashboard is for watching; a run must not die because it would not start
            log.warning("Ray dashboard failed to start (%s); continuing without it", str(e).splitlines()[0])
            ray.shutdown()
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=True)
    else:
        target = address or os.environ.get("RAY_ADDRESS")
        setup_client_auth()
        if target not in ("auto", "local") and not str(target).startswith("ray://"):
            _check_tcp(str(target), connect_timeout_s)
        try:
            ray.init(address=target, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterUnreachable(f"cannot connect to the Ray cluster at '{target}': {e}") from None
    ctx = ray.get_runtime_context()
    url = None
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url() or None
    except Exception:
        url = None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    info = {"address": ctx.gcs_address, "dashboard_url": url, "resources": ray.cluster_resources()}
    log.info("Ray at %s; dashboard: %s", info["address"], url or "not running")
    return info
