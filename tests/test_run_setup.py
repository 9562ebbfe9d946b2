"""Reusing a built synthetic benchmark only when it matches the config."""
import pytest

from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.training.run_setup import ensure_data


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"data.prepared_dir={tmp_path / 'syn'}", "data.synthetic.per_cell=5",
                              "data.synthetic.image_size=56", *overrides])


def test_a_matching_build_is_reused(tmp_path):
    train, test = ensure_data(_cfg(tmp_path))
    again_train, again_test = ensure_data(_cfg(tmp_path))
    assert [r.id for r in again_train] == [r.id for r in train] and len(test) == len(again_test) > 0


@pytest.mark.parametrize("override, name", [("data.synthetic.per_cell=6", "per_cell"),
                                            ("data.synthetic.option_order=canonical", "option_order"),
                                            ("data.synthetic.seed=1", "seed")])
def test_a_build_with_other_settings_is_refused_by_name(tmp_path, override, name):
    ensure_data(_cfg(tmp_path))
    with pytest.raises(UserError, match=rf"{name}=.*\(config: .*Delete .*syn to rebuild"):
        ensure_data(_cfg(tmp_path, override))
    assert (tmp_path / "syn" / "manifest.json").is_file(), "nothing is deleted"


def test_a_warm_start_is_reused_only_with_the_settings_it_was_built_with(tmp_path, tiny_model_dir):
    import json
    import shutil

    from learner.checkpoint_manifest import seal
    from pipelines.training.run_setup import ensure_warmstart, records_digest

    cfg = _cfg(tmp_path, f"sft.warmstart_dir={tmp_path / 'warm'}")
    train, _ = ensure_data(cfg)
    shutil.copytree(tiny_model_dir, tmp_path / "warm" / "hf")  # as a finished warm-start leaves it...
    seal(tmp_path / "warm")  # ...sealed by its manifest
    with pytest.raises(UserError, match=r"warm-start in .*warm was built with other settings: base_model=None"):
        ensure_warmstart(cfg, str(tiny_model_dir), train)  # no record: built by an older version
    record = {"base_model": str(tiny_model_dir), "prompt_style": "think", "epochs": 2.0, "lr": 1e-3,
              "train_records": None}
    (tmp_path / "warm" / "warmstart.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"train_records=None"):
        ensure_warmstart(cfg, str(tiny_model_dir), train)
    record["train_records"] = records_digest(train)
    (tmp_path / "warm" / "warmstart.json").write_text(json.dumps(record))
    assert ensure_warmstart(cfg, str(tiny_model_dir), train) == str(tmp_path / "warm" / "hf")
    nothink = _cfg(tmp_path, f"sft.warmstart_dir={tmp_path / 'warm'}", "sft.prompt_style=nothink")
    with pytest.raises(UserError, match=r"prompt_style='think' \(now: 'nothink'\)"):
        ensure_warmstart(nothink, str(tiny_model_dir), train)
    # the same record ids with canonical options are other training data
    canon, _ = ensure_data(_cfg(tmp_path / "c", "data.synthetic.option_order=canonical"))
    assert [r.id for r in canon] == [r.id for r in train] and records_digest(canon) != records_digest(train)
