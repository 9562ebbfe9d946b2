"""The algorithm knobs (GSPO, dynamic sampling, overlong handling) in the config: paper defaults,
typed overrides, and the combinations refused before start."""
from __future__ import annotations

import pytest

from pipelines.config import ConfigError, load_config


def test_paper_defaults_are_kept():
    g = load_config("medr1_qwen2vl_2b.yaml").grpo
    assert g.ratio_level == "token"


def test_gspo_ratio_level_override_and_bad_value():
    assert load_config("smoke.yaml", ["grpo.ratio_level=sequence"]).grpo.ratio_level == "sequence"
    with pytest.raises(ConfigError) as e:
        load_config("smoke.yaml", ["grpo.ratio_level=seq"])
    assert "grpo.ratio_level" in str(e.value) and "sequence" in str(e.value)
