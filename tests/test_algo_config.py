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


def test_dapo_knobs_default_off():
    g = load_config("medr1_qwen2vl_2b.yaml").grpo
    assert not g.dynamic_sampling and not g.overlong_filter and g.overlong_buffer == 0


def test_dynamic_sampling_with_async_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as e:
        load_config("smoke.yaml", ["grpo.dynamic_sampling=true", "rollout.async=true"])
    assert "grpo.dynamic_sampling" in str(e.value) and "async" in str(e.value) and "cursor" in str(e.value)
    cfg = load_config("smoke.yaml", ["grpo.dynamic_sampling=true", "grpo.dynamic_sampling_max_tries=5"])
    assert cfg.grpo.dynamic_sampling and cfg.grpo.dynamic_sampling_max_tries == 5


@pytest.mark.parametrize("overrides, words", [
    (["grpo.dynamic_sampling_max_tries=-1"], "dynamic_sampling_max_tries"),
    (["grpo.overlong_buffer=17"], "overlong_buffer"),  # smoke: max_new_tokens 16
    (["grpo.overlong_buffer=-1"], "overlong_buffer"),
    (["grpo.overlong_penalty=-0.5"], "overlong_penalty"),
])
def test_bad_dapo_values_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config("smoke.yaml", overrides)


def test_overlong_knobs_load():
    g = load_config("smoke.yaml", ["grpo.overlong_filter=true", "grpo.overlong_buffer=4",
                                   "grpo.overlong_penalty=0.5"]).grpo
    assert g.overlong_filter and g.overlong_buffer == 4 and g.overlong_penalty == 0.5
