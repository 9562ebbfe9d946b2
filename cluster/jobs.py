"""Ray Jobs on a cluster (``medr1 submit`` / ``status`` / ``logs`` / ``stop``).

The address is checked before anything is sent (short timeout; a token-auth head
that refuses us is told apart from one that is not there). The job runs
``python -m pipelines.cli train CONFIG overrides...`` in the uploaded working dir:
no console script needed on the cluster. What is uploaded and the job's env are
``cluster.upload``'s; the config checks before a submission are
``pipelines.submission``'s (``cluster`` needs only Ray).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

from ray.job_submission import JobSubmissionClient

from cluster.auth import read_token, setup_client_auth, token_path
from cluster.errors import JobsError
from cluster.upload import UploadSize

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"



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
    try:
        return JobSubmissionClient(url)
    except Exception as e:
        raise JobsError(f"cannot open a job client for {url}: {e}") from None



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


def build_entrypoint(config_path: str, overrides: list[str], python: str = "python") -> str:
    return shlex.join([python, "-m", "pipelines.cli", "train", config_path, *overrides])


def submit(sub: Submission, address: Optional[str] = None, *, submission_id: Optional[str] = None,
           metadata: Optional[dict[str, str]] = None, timeout: float = 5.0,
           agent_wait_s: float = 90.0) -> tuple[str, str]:
    """Send a prepared submission; returns (job id, dashboard URL)."""
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
    c = client(address)
    deadline = time.monotonic() + timeout
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobsError(f"job '{job_id}' still {status} after {timeout:.0f}s")
        time.sleep(poll_s)
