"""Which checkpoint resume_from=auto continues from, and keep_last_n pruning (files only)."""
from __future__ import annotations

from learner.checkpoint_manifest import seal
from pipelines.training.checkpoints import latest_valid, prune, run_checkpoints


def _save(run, name: str, sealed: bool = True):
    d = run / "checkpoints" / name
    (d / "hf").mkdir(parents=True)
    (d / "hf" / "model.safetensors").write_bytes(name.encode() * 100)
    if sealed:
        seal(d)
    return d


def test_auto_picks_the_newest_valid_checkpoint(tmp_path):
    assert latest_valid(tmp_path) is None  # nothing saved yet: start fresh
    for n in (1, 2, 10):
        _save(tmp_path, f"step_{n}")
    assert [p.name for p in run_checkpoints(tmp_path)] == ["step_1", "step_2", "step_10"]  # by step, not by name
    assert latest_valid(tmp_path).name == "step_10"
    _save(tmp_path, "step_11", sealed=False)  # a save that never finished
    assert latest_valid(tmp_path).name == "step_10"
    corrupt = tmp_path / "checkpoints" / "step_10" / "hf" / "model.safetensors"
    corrupt.write_bytes(b"x" + corrupt.read_bytes()[1:])
    assert latest_valid(tmp_path).name == "step_2"
    _save(tmp_path, "final")
    assert latest_valid(tmp_path).name == "final"


def test_keep_last_n_prunes_only_older_step_checkpoints(tmp_path):
    for n in (1, 2, 3):
        _save(tmp_path, f"step_{n}")
    _save(tmp_path, "final")
    assert prune(tmp_path, 0) == []  # 0 keeps everything
    removed = prune(tmp_path, 2)
    assert [p.name for p in removed] == ["step_1"]
    assert [p.name for p in run_checkpoints(tmp_path)] == ["step_2", "step_3", "final"]
    _save(tmp_path, "step_4", sealed=False)  # unfinished: does not count as one to keep
    assert prune(tmp_path, 2) == []
    assert [p.name for p in run_checkpoints(tmp_path)] == ["step_2", "step_3", "step_4", "final"]


def test_auto_resume_refuses_a_checkpoint_saved_with_other_settings(tmp_path):
    import json

    import pytest

    from pipelines.config import load_config, to_dict
    from pipelines.errors import UserError
    from pipelines.training.checkpoints import changed_settings, refuse_other_settings, run_settings

    assert load_config("smoke.yaml").trainer.resume_from == "auto"  # the default: a rerun continues its run
    base = run_settings(to_dict(load_config("smoke.yaml")))
    ckpt = _save(tmp_path, "step_1")
    (ckpt / "deepspeed").mkdir()
    (ckpt / "deepspeed" / "medr1_state.json").write_text(json.dumps({"step": 1, "settings": base}))
    # Where it runs, how long and how it logs may change on a rerun: still the same run.
    same = load_config("smoke.yaml", ["trainer.total_steps=50", "rollout.num_workers=1", "logging.tensorboard=false",
                                      f"trainer.output_dir={tmp_path}", "eval.max_samples=3"])
    refuse_other_settings(ckpt, run_settings(to_dict(same)))
    other = run_settings(to_dict(load_config("smoke.yaml", ["learner.lr=0.5", "data.seed=9"])))
    assert changed_settings(base, other) == [f"data.seed: {base['data.seed']} -> 9",
                                             f"learner.lr: {base['learner.lr']} -> 0.5"]
    with pytest.raises(UserError, match=r"saved with other settings: data.seed: .* -> 9; learner.lr: .* -> 0.5"):
        refuse_other_settings(ckpt, other)
    (ckpt / "deepspeed" / "medr1_state.json").unlink()  # a checkpoint from before settings were stored
    refuse_other_settings(ckpt, other)
