"""Job submission: the checks before submitting (fast, no Ray) and real jobs on a
local token-auth head started with ``ray start --head`` (slow).

The head runs as ``ray start --head --block`` in its own process group and is
stopped by signalling that group: ``ray stop`` would kill every Ray process on
the machine, including other test sessions' clusters.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster import auth, jobs, upload
from cluster.errors import JobsError
from pipelines import submission

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# ---------------------------------------------------------------- fast: checks before submitting

def test_unreachable_address_is_a_clear_error():
    [port] = _free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(JobsError, match=rf"cannot reach the Ray cluster at http://127.0.0.1:{port}.*--address"):
        jobs.check_address(f"127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 30  # seconds, not the minutes a retrying client would take
    with pytest.raises(JobsError, match="Ray Client address"):
        jobs.normalize_address("ray://head:10001")


def test_cli_unreachable_exits_2_with_one_line(capsys, tmp_path):
    from pipelines.cli.main import main

    [port] = _free_ports(1)
    rc = main(["submit", "configs/smoke.yaml", f"trainer.output_dir={tmp_path}/run", "--address",
               f"http://127.0.0.1:{port}", "--timeout", "2", "--no-wait"])
    err = capsys.readouterr().err
    assert rc == 2 and "medr1 submit: error: cannot reach the Ray cluster" in err and "Traceback" not in err


def test_oversize_working_dir_is_refused_with_offenders(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "cli.py").write_text("")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "big.npy").write_bytes(b"\0" * (3 << 20))
    (tmp_path / "notes.txt").write_bytes(b"x" * (1 << 20))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "huge.so").write_bytes(b"\0" * (8 << 20))  # excluded: does not count
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (8 << 20))  # excluded
    size = upload.upload_size(tmp_path, upload.DEFAULT_EXCLUDES)
    assert 4 << 20 <= size.total_bytes < 5 << 20
    with pytest.raises(JobsError) as e:
        upload.check_working_dir(tmp_path, upload.DEFAULT_EXCLUDES, max_mib=2)
    msg = str(e.value)
    assert "over the 2 MiB upload limit" in msg and "weights/big.npy" in msg and "weights/" in msg
    assert ".venv" not in msg and "safetensors" not in msg
    upload.check_working_dir(tmp_path, upload.DEFAULT_EXCLUDES, max_mib=10)


def test_relative_output_dir_is_refused_and_storage_path_rewrites_it(tmp_path):
    with pytest.raises(JobsError, match="trainer.output_dir 'outputs/smoke/run' is relative.*--storage-path"):
        submission.prepare_submission("configs/smoke.yaml", [], working_dir=REPO)
    with pytest.raises(JobsError, match="absolute"):
        submission.prepare_submission("configs/smoke.yaml", [], working_dir=REPO, storage_path="rel/dir")
    sub = submission.prepare_submission("smoke.yaml", ["rollout.num_workers=1"], working_dir=REPO,
                                  storage_path=str(tmp_path))
    assert sub.cfg.trainer.output_dir == str(tmp_path / "run")
    assert sub.overrides[-1] == f"trainer.output_dir={tmp_path / 'run'}"
    assert sub.config_path == "configs/smoke.yaml"


def test_submission_entrypoint_runtime_env_and_cli_parse(tmp_path):
    from pipelines.cli.main import build_parser

    out = REPO / "outputs" / "abs-run"  # absolute but inside the uploaded tree: excluded from the upload
    sub = submission.prepare_submission("configs/smoke.yaml", ["rollout.num_workers=3", "trainer.total_steps=1",
                                                         f"trainer.output_dir={out}"], working_dir=REPO)
    argv = shlex.split(sub.entrypoint)
    assert argv[:4] == ["python", "-m", "pipelines.cli", "train"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "train" and args.config == "configs/smoke.yaml"
    assert "rollout.num_workers=3" in args.overrides
    rt = sub.runtime_env
    assert rt["working_dir"] == str(REPO)
    assert {"/.venv", ".git", "/outputs", "*.parquet", "*.safetensors", "checkpoints"} <= set(rt["excludes"])
    assert "/outputs/abs-run" in rt["excludes"]
    assert rt["env_vars"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and "PYTHONPATH" not in rt["env_vars"]
    assert "pip" not in rt and "uv" not in rt  # the cluster image has the stack unless --install
    assert sub.upload.mib < 20
    gpu = upload.build_runtime_env(REPO, gpu=True, install=True)
    assert not any(k.startswith("VLLM_CPU") for k in gpu["env_vars"])
    assert "vllm==0.32.0" in gpu["uv"]["packages"]


def test_config_outside_working_dir_is_refused(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("trainer: {total_steps: 1}\n")
    with pytest.raises(JobsError, match="outside the working dir"):
        submission.prepare_submission(str(cfg), [f"trainer.output_dir={tmp_path}/o"], working_dir=REPO)


def test_auth_mode_set_when_a_token_exists(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    assert auth.setup_client_auth() is False and "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "tok").write_text("abc\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert auth.setup_client_auth() is True and os.environ["RAY_AUTH_MODE"] == "token"
    assert auth.read_token() == "abc"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth.setup_client_auth() is False


# ---------------------------------------------------------------- slow: a real head

@pytest.fixture(scope="module")
def ray_head():
    gcs, dash, metrics, client, agent, agent_grpc, rt_agent = _free_ports(7)
    tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--port", str(gcs), "--dashboard-port", str(dash),
           "--metrics-export-port", str(metrics), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(rt_agent), "--num-cpus", "4", "--temp-dir", f"{tmp}/ray",
           "--disable-usage-stats"]
    log = open(f"{tmp}/head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401 without a token: up, and token auth is on
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ray head did not come up:\n" + Path(f"{tmp}/head.log").read_text()[-3000:])
                time.sleep(1)
        yield {"address": url, "metrics": f"http://127.0.0.1:{metrics}/metrics", "tmp": tmp}
    finally:
        # Only the processes this fixture started: the `ray start --block` process group.
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group after the leader exited
        except ProcessLookupError:
            pass
        log.close()


def _scrape(url: str, name: str, run: str, timeout: float = 90.0) -> float:
    pat = re.compile(rf'^{name}\{{[^}}]*run="{re.escape(run)}"[^}}]*\}} (\S+)$', re.M)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            text = ""
        m = pat.search(text)
        if m:
            return float(m.group(1))
        time.sleep(3)
    raise AssertionError(f"{name}{{run={run!r}}} not on {url}; medr1 lines: "
                         + "\n".join(ln for ln in text.splitlines() if "medr1" in ln)[:2000])


METRICS_JOB = """
import time, ray
from cluster.metrics import RayMetrics
ray.init()
m = RayMetrics("jobtest")
for step in range(3):
    m.record({"reward_mean": 0.625, "accuracy": 0.5, "step": step, "note": "skipped"})
    time.sleep(1)
print("MEDR1-JOB-MARKER failures=%d" % m.failures)
time.sleep(8)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_job_submission_logs_and_driver_metrics_reach_prometheus(ray_head):
    """A trivial job through cluster.jobs (token auth), its logs, and RayMetrics from a job's driver."""
    rt = upload.build_runtime_env(REPO, env_vars={"PYTHONPATH": str(REPO)})
    rt.pop("working_dir")  # a plain script: no upload needed
    rt.pop("excludes")
    rt["env_vars"]["PYTHONPATH"] = str(REPO)
    sub = jobs.Submission(entrypoint=shlex.join(["python", "-c", METRICS_JOB]), runtime_env=rt, overrides=[],
                          config_path="")
    job_id, url = jobs.submit(sub, ray_head["address"])
    assert url == ray_head["address"]
    assert jobs.wait_job(job_id, url, timeout=240, poll_s=1) == "SUCCEEDED", jobs.job_logs(job_id, url)
    assert "MEDR1-JOB-MARKER failures=0" in jobs.job_logs(job_id, url)
    assert jobs.job_status(job_id, url) == "SUCCEEDED"
    assert _scrape(ray_head["metrics"], "ray_medr1_reward_mean", "jobtest") == 0.625
    assert _scrape(ray_head["metrics"], "ray_medr1_step", "jobtest") == 2.0


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_medr1_submit_smoke_config(ray_head, smoke_start, tmp_path, capsys):
    """`medr1 submit configs/smoke.yaml trainer.output_dir=<abs>` runs GRPO as a job and writes its outputs.
    It starts from the session's warm-start (absolute paths: the job runs on this machine)."""
    from pipelines.cli.main import main

    out = tmp_path / "smoke-run"
    rc = main(["submit", "configs/smoke.yaml", f"trainer.output_dir={out}", *smoke_start, "rollout.num_workers=1",
               "--address", ray_head["address"], "--no-wait"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    job_id = re.search(r"submitted job: (\S+)", printed).group(1)
    assert f"dashboard: {ray_head['address']}/#/jobs/{job_id}" in printed
    status = jobs.wait_job(job_id, ray_head["address"], timeout=600, poll_s=3)
    logs = jobs.job_logs(job_id, ray_head["address"])
    assert status == "SUCCEEDED", logs[-4000:]
    assert (out / "summary.json").is_file() and (out / "metrics.jsonl").is_file()
    assert main(["status", job_id, "--address", ray_head["address"]]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    text = urllib.request.urlopen(ray_head["metrics"], timeout=5).read().decode()
    assert "ray_medr1_reward_mean{" in text
