"""Atomic checkpoints: a save appears whole under its name or not at all (files only, no learner)."""
from __future__ import annotations

import errno

import pytest

from learner import checkpoint_atomic as atomic
from learner.checkpoint_manifest import CheckpointError, is_sealed, seal, verify
from pipelines.training.checkpoints import latest_valid, run_checkpoints, tidy


def _write(d, content: bytes, sealed: bool = True):
    (d / "hf").mkdir(parents=True)
    (d / "hf" / "model.safetensors").write_bytes(content)
    if sealed:
        seal(d)
    return d


def _staged(target, token, content: bytes, sealed: bool = True):
    return _write(atomic.staging_dir(target, token), content, sealed)


def test_leftover_names():
    from pathlib import Path

    assert atomic.leftover_of(Path("step_3.tmp-123")) == "step_3"
    assert atomic.leftover_of(Path("final.old-9")) == "final"
    assert atomic.leftover_of(Path("step_3")) is None
    assert atomic.leftover_of(Path(".tmp-1")) is None  # no name before the marker
    assert atomic.leftover_of(Path("final.tmp-")) is None


def test_publish_replaces_an_existing_checkpoint_and_keeps_what_else_lives_there(tmp_path):
    target = _write(tmp_path / "final", b"old")
    (target / "sft_metrics.jsonl").write_text('{"step": 1}\n')  # an SFT run's log beside its checkpoint
    staged = _staged(target, "7", b"new")
    atomic.publish(staged, target)
    assert (target / "hf" / "model.safetensors").read_bytes() == b"new"
    verify(target)
    assert (target / "sft_metrics.jsonl").read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no staging or retired copy left


def test_publish_refuses_an_unsealed_directory(tmp_path):
    target = _write(tmp_path / "final", b"old")
    staged = _staged(target, "7", b"half", sealed=False)
    with pytest.raises(CheckpointError, match="not sealed"):
        atomic.publish(staged, target)
    assert (target / "hf" / "model.safetensors").read_bytes() == b"old"


def test_leftovers_are_not_checkpoints_and_tidy_removes_them(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _write(ckpts / "step_1", b"one")
    _staged(ckpts / "step_2", "41", b"two-half", sealed=False)  # killed while writing step_2
    _staged(ckpts / "final", "41", b"final-half", sealed=False)
    assert [p.name for p in run_checkpoints(tmp_path)] == ["step_1"]
    assert latest_valid(tmp_path).name == "step_1"  # what resume_from=auto continues from
    removed = tidy(tmp_path)
    assert sorted(p.name for p in removed) == ["final.tmp-41", "step_2.tmp-41"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_1"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    """publish renamed the old ``final`` away and died before renaming the new one in."""
    ckpts = tmp_path / "checkpoints"
    _write(ckpts / "step_1", b"one")
    _write(ckpts / f"final{atomic.RETIRED}5", b"old final")
    _staged(ckpts / "final", "5", b"new final")
    assert latest_valid(tmp_path).name == "step_1"  # before tidy: no "final" under its name
    tidy(tmp_path)
    assert latest_valid(tmp_path).name == "final"
    assert (ckpts / "final" / "hf" / "model.safetensors").read_bytes() == b"new final"
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_1"]


def test_only_a_sealed_retired_copy_left_is_put_back(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _write(ckpts / f"final{atomic.RETIRED}5", b"old final")
    _staged(ckpts / "final", "5", b"half", sealed=False)
    tidy(tmp_path)
    assert (ckpts / "final" / "hf" / "model.safetensors").read_bytes() == b"old final"
    assert sorted(p.name for p in ckpts.iterdir()) == ["final"]


def test_recover_of_one_name_leaves_other_saves_alone(tmp_path):
    """Warm-starts of parallel protocol cells share a parent: one save must not delete another's staging."""
    _staged(tmp_path / "warm-CT", "1", b"ct", sealed=False)
    _staged(tmp_path / "warm-MRI", "2", b"mri", sealed=False)
    atomic.recover(tmp_path, "warm-CT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warm-MRI.tmp-2"]


def test_write_failed_removes_the_staging_and_names_the_path(tmp_path):
    target = tmp_path / "checkpoints" / "step_2"
    staged = _staged(target, "3", b"partial", sealed=False)
    err = atomic.write_failed(target, staged, OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(target) in str(err) and "disk is full" in str(err) and "previous checkpoints are untouched" in str(err)
    assert not staged.exists()
    other = atomic.write_failed(target, staged, PermissionError(errno.EACCES, "Permission denied"))
    assert "PermissionError" in str(other) and "disk is full" not in str(other)  # the free space is not near 0 here


def test_seal_covers_nested_directories(tmp_path):
    d = tmp_path / "ck"
    (d / "deepspeed" / "state").mkdir(parents=True)
    (d / "deepspeed" / "state" / "optim.pt").write_bytes(b"o" * 10)
    (d / "deepspeed" / "latest").write_text("state")
    assert sorted(seal(d, ("deepspeed",))["files"]) == ["deepspeed/latest", "deepspeed/state/optim.pt"]
    assert is_sealed(d)
