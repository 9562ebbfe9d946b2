"""Reusing a built synthetic benchmark only when it matches the config."""
import pytest

from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.run_setup import ensure_data


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
