"""The real learner's save under faults: killed mid-save, disk full (simulated, and a real small
tmpfs where the test may mount one), overwriting a checkpoint that then fails."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from learner.checkpoint_atomic import STAGING, CheckpointWriteError
from learner.checkpoint_manifest import verify
from pipelines.training.checkpoints import latest_valid, saved_state, tidy
from tests.conftest import REPO
from tests.test_learner import dist_env, make_learner, make_samples, one_thread  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def learner(tiny_model_dir, dist_env):  # noqa: F811
    return make_learner(tiny_model_dir, zero_stage=2, lr=1e-3, beta=0.0, micro_batch_size=4)


def _weights_file(ckpt):
    return (ckpt / "hf" / "model.safetensors").read_bytes()


def _disk_full_on_torch_save(monkeypatch):
    """torch.save (DeepSpeed's engine and optimizer states) fails as on a full disk, after the HF files."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)


def test_disk_full_mid_save_leaves_the_previous_checkpoint(learner, tmp_path, monkeypatch):
    run = tmp_path / "run"
    learner.train_step(make_samples(learner.processor, 4, seed=1))
    learner.save_checkpoint(str(run / "checkpoints" / "step_1"), {"step": 1})
    before = _weights_file(run / "checkpoints" / "step_1")
    assert saved_state(run / "checkpoints" / "step_1") == {"step": 1}  # readable without loading the engine
    learner.train_step(make_samples(learner.processor, 4, seed=2))
    _disk_full_on_torch_save(monkeypatch)
    target = run / "checkpoints" / "step_2"
    with pytest.raises(CheckpointWriteError, match=f"saving checkpoint {target} failed \\(the disk is full") as e:
        learner.save_checkpoint(str(target), {"step": 2})
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]  # staging removed, no step_2
    verify(run / "checkpoints" / "step_1")
    assert _weights_file(run / "checkpoints" / "step_1") == before
    assert latest_valid(run).name == "step_1"
    assert learner.load_checkpoint(str(run / "checkpoints" / "step_1")) == {"step": 1}


def test_disk_full_during_the_hf_export_fails_the_save(learner, tmp_path, monkeypatch):
    """The HF weights are written first, by rank 0 alone; their failure must fail the save like any other."""
    import transformers.modeling_utils

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    target = tmp_path / "checkpoints" / "step_1"
    with pytest.raises(CheckpointWriteError, match="the disk is full"):
        learner.save_checkpoint(str(target), {"step": 1})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_staging_directory_that_cannot_be_made_is_named(learner, tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints directory should be")
    with pytest.raises(CheckpointWriteError, match="failed on rank 0 \\(its staging directory: "):
        learner.save_checkpoint(str(tmp_path / "checkpoints" / "step_1"), {"step": 1})


def test_a_failed_overwrite_keeps_the_old_checkpoint(learner, tmp_path, monkeypatch):
    final = tmp_path / "final"
    learner.save_checkpoint(str(final), {"v": 1})
    old = _weights_file(final)
    learner.train_step(make_samples(learner.processor, 4, seed=3))
    _disk_full_on_torch_save(monkeypatch)
    with pytest.raises(CheckpointWriteError, match=str(final)):
        learner.save_checkpoint(str(final), {"v": 2})
    monkeypatch.undo()
    verify(final)
    assert _weights_file(final) == old
    learner.save_checkpoint(str(final), {"v": 3})  # the overwrite itself works once the disk has room
    assert _weights_file(final) != old and learner.load_checkpoint(str(final)) == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import torch
    from tests.test_learner import make_learner
    run = sys.argv[2]
    learner = make_learner(sys.argv[1], zero_stage=2, beta=0.0, micro_batch_size=4)
    learner.save_checkpoint(run + "/checkpoints/step_1", {"step": 1})
    def die(*a, **k):  # SIGKILL in the middle of the save: no handler, no cleanup runs
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = die
    learner.save_checkpoint(run + "/checkpoints/step_2", {"step": 2})
""")


@pytest.mark.slow
def test_sigkill_mid_save_leaves_the_previous_checkpoint_to_resume(tiny_model_dir, tmp_path):
    from cluster.ray_utils import free_port

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tiny_model_dir), str(run)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[0] == "step_1" and names[1].startswith(f"step_2{STAGING}") and len(names) == 2, names
    assert (run / "checkpoints" / names[1] / "hf" / "model.safetensors").is_file()  # it died part-way, not before
    assert latest_valid(run).name == "step_1"  # what trainer.resume_from=auto continues from
    verify(run / "checkpoints" / "step_1")
    tidy(run)  # the next save (or automatic resume) clears the leftover
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]


def _dir_bytes(d) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def test_real_disk_full_on_a_small_tmpfs(learner, tmp_path):
    """Room for one checkpoint but not two: the second save fails clearly and the first stays valid."""
    probe = tmp_path / "probe"
    learner.save_checkpoint(str(probe))
    size = _dir_bytes(probe)
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated disk-full tests cover the logic")
    try:
        run = mnt / "run"
        learner.save_checkpoint(str(run / "checkpoints" / "step_1"), {"step": 1})
        target = run / "checkpoints" / "step_2"
        with pytest.raises(CheckpointWriteError, match=f"saving checkpoint {target} failed \\(the disk is full"):
            learner.save_checkpoint(str(target), {"step": 2})
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]
        verify(run / "checkpoints" / "step_1")
        assert latest_valid(run).name == "step_1"
    finally:
        # Lazy: a file the learner's engine still holds open would make a plain umount fail (busy) and
        # leave the mount behind for every later pytest run's tmp cleanup to trip over.
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class _RunsCode:
    """What a hostile state file holds: unpickling it calls a function (here: creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_state_file_that_would_run_code_is_refused(learner, tmp_path):
    from learner.checkpoint_manifest import seal
    from learner.ds_safe_load import UnsafeCheckpointError

    ckpt = tmp_path / "ckpt"
    learner.save_checkpoint(str(ckpt), {"step": 1})
    states = next((ckpt / "deepspeed").rglob("mp_rank_00_model_states.pt"))
    marker = tmp_path / "pwned"
    real_save = torch.save
    real_save({"module": _RunsCode(marker)}, states)
    seal(ckpt)  # whoever can write the files can rewrite the manifest too: the hashes match
    with pytest.raises(UnsafeCheckpointError, match=f"{states}: refused"):
        learner.load_checkpoint(str(ckpt))
    assert not marker.exists(), "the pickled call ran"


_TWO_RANK_SAVE = textwrap.dedent("""
    import errno, json, os, signal, sys, time
    import torch
    from tests.test_learner import make_learner
    rank, run = int(os.environ["RANK"]), sys.argv[2]
    learner = make_learner(sys.argv[1], zero_stage=2, beta=0.0, micro_batch_size=4)
    learner.save_wait_s = 30.0
    out = {}
    learner.save_checkpoint(run + "/checkpoints/step_1", {"step": 1})

    def attempt(name, step):
        t = time.monotonic()
        try:
            learner.save_checkpoint(run + f"/checkpoints/step_{step}", {"step": step})
            out[name] = "saved"
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
        out[name + "_s"] = time.monotonic() - t
        print(f"ATTEMPT {name}: {out[name]}", flush=True)

    real_save = torch.save
    if rank == 1:  # rank 1's disk is full: its ZeRO optimizer shard cannot be written
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        torch.save = full
    attempt("full", 2)
    torch.save = real_save
    if rank == 1:  # then rank 1 dies in the middle of a save
        torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    attempt("died", 3)
    print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.mark.slow
def test_a_save_failing_on_one_rank_stops_every_rank_naming_it(tiny_model_dir, tmp_path):
    """Two ZeRO-2 ranks (real processes, gloo). Rank 1's disk is full: both ranks raise at once, naming rank 1,
    instead of rank 0 waiting at the barrier. Then rank 1 dies mid-save: rank 0's wait ends with an error too."""
    import json
    import time

    from cluster.ray_utils import free_port

    run = tmp_path / "run"
    base = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "DEEPSPEED_TIMEOUT": "2"}  # minutes: a hang would show
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_RANK_SAVE, str(tiny_model_dir), str(run)],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    t0 = time.monotonic()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert time.monotonic() - t0 < 400, "the ranks waited for the process group's time limit"
    assert procs[1].returncode == -signal.SIGKILL, outs[1][-3000:]
    assert procs[0].returncode == 0, outs[0][-3000:]
    r0 = json.loads(outs[0].split("RESULT ", 1)[1].splitlines()[0])
    for text in (r0["full"], outs[1]):  # rank 1 printed nothing (it was killed later); its error is in its log
        assert "saving checkpoint" in text and "step_2 failed on rank 1 (the disk is full" in text, text[-2000:]
    assert r0["full_s"] < 60, r0  # not a barrier's time limit: the ranks agreed at once
    assert r0["died"].startswith("CheckpointWriteError") and "saving checkpoint" in r0["died"], r0
    assert "step_3: another rank stopped answering" in r0["died"] or "not every rank finished" in r0["died"], r0
    assert r0["died_s"] < 150, r0
    assert latest_valid(run).name == "step_1"  # neither failed save left anything a resume would take
    verify(run / "checkpoints" / "step_1")
    tidy(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]
