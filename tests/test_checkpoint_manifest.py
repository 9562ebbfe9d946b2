"""A checkpoint is trusted only when every file matches the manifest written last."""
from __future__ import annotations

import pytest

from learner.checkpoint_manifest import MANIFEST, CheckpointError, seal, verify


def _checkpoint(d):
    (d / "hf").mkdir(parents=True)
    (d / "deepspeed" / "state").mkdir(parents=True)
    (d / "hf" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (d / "deepspeed" / "state" / "mp_rank_00_model_states.pt").write_bytes(b"\x00" * 5000)
    (d / "notes.txt").write_text("not part of the checkpoint")
    return d


def test_sealed_checkpoint_verifies(tmp_path):
    d = _checkpoint(tmp_path / "ckpt")
    manifest = seal(d)
    assert sorted(manifest["files"]) == ["deepspeed/state/mp_rank_00_model_states.pt", "hf/model.safetensors"]
    assert verify(d) == manifest
    (d / "notes.txt").write_text("edited")  # outside the checkpoint's parts: not its business
    verify(d)


def test_unsealed_checkpoint_is_incomplete(tmp_path):
    d = _checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=f"incomplete: it has no {MANIFEST}"):
        verify(d)
    seal(d)
    (d / MANIFEST).unlink()  # a manifest lost or never written: nothing vouches for the files
    with pytest.raises(CheckpointError, match="incomplete"):
        verify(d)


@pytest.mark.parametrize("change", ["flip", "truncate", "delete"])
def test_changed_file_is_named(tmp_path, change):
    d = _checkpoint(tmp_path / "ckpt")
    seal(d)
    f = d / "hf" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if change == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif change == "truncate":
        f.write_bytes(bytes(data[:-1]))
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match="hf/model.safetensors"):
        verify(d)


def test_missing_directory_and_bad_manifest(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        verify(tmp_path / "nope")
    d = _checkpoint(tmp_path / "ckpt")
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        verify(d)
