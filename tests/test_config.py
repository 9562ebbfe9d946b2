"""Typed configs: every shipped YAML resolves; bad keys and values are refused clearly."""
from __future__ import annotations

import re

import pytest

from pipelines.config import CONFIG_DIR, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_resolve(name):
    cfg = load_config(name)
    assert cfg.rollout.group_size >= 2


def test_paper_recipe_values():
    cfg = load_config("medr1_qwen2vl_2b.yaml")
    assert cfg.rollout.group_size == 4
    assert cfg.grpo.beta == 0.04 and cfg.grpo.kl_estimator.value == "k3"
    assert cfg.learner.lr == 1e-6 and cfg.learner.zero_stage == 2 and cfg.learner.bf16
    assert cfg.rollout.max_new_tokens == 256 and cfg.rollout.temperature == 1.0
    assert cfg.model.max_pixels == 401408 and cfg.data.max_prompt_length == 1024


def test_overrides_apply_with_types():
    cfg = load_config("smoke.yaml", ["rollout.num_workers=3", "grpo.beta=0", "rollout.resources_per_worker.custom={rollout_node: 1}"])
    assert cfg.rollout.num_workers == 3 and cfg.grpo.beta == 0.0
    assert cfg.rollout.resources_per_worker.custom == {"rollout_node": 1}


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config("smoke.yaml", ["rollout.num_worker=3"])
    msg = str(e.value)
    assert "rollout.num_worker" in msg and "Did you mean 'rollout.num_workers'" in msg and "group_size" in msg


def test_unknown_key_in_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  total_stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "trainer.total_stepz" in str(e.value) and "total_steps" in str(e.value)


def test_wrong_type_and_enum_choices():
    with pytest.raises(ConfigError, match="rollout.num_workers"):
        load_config(None, ["rollout.num_workers=many"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["grpo.kl_estimator=k9"])
    assert "k1" in str(e.value) and "k3" in str(e.value)


def test_semantic_checks():
    with pytest.raises(ConfigError, match="group_size"):
        load_config(None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(None, ["learner.zero_stage=4"])
    with pytest.raises(ConfigError, match="moves weights between GPUs"):
        load_config(None, ["weight_sync.backend=nccl"])


GPU = ["rollout.resources_per_worker.num_gpus=1", "learner.resources_per_worker.num_gpus=1"]
HALF = ["rollout.resources_per_worker.num_gpus=0.5", "learner.resources_per_worker.num_gpus=0.5"]


@pytest.mark.parametrize("overrides, reason", [
    (["weight_sync.backend=nccl", "cluster.colocate=true", *HALF], "NCCL refuses; use weight_sync.backend=ipc"),
    (["weight_sync.backend=ipc", *GPU], "needs cluster.colocate=true"),
    (["weight_sync.backend=ipc"], "moves weights between GPUs"),
    (["weight_sync.backend=ipc", "cluster.colocate=true", *HALF, "rollout.num_workers=2", "learner.num_workers=1"],
     "every engine needs a learner rank on its GPU"),
    (["weight_sync.backend=nccl", *GPU, "learner.zero_stage=3"], "zero_stage <= 2"),
    (["weight_sync.backend=gloo", "learner.zero_stage=3"], "zero_stage <= 2"),
    (["rollout.tensor_parallel_size=2"], "needs GPUs"),
    (["rollout.tensor_parallel_size=2", *GPU], "num_gpus must be 2"),
    (["rollout.tensor_parallel_size=2", "rollout.resources_per_worker.num_gpus=2", "cluster.colocate=true"],
     "tensor_parallel_size must be 1"),
    (["weight_sync.timeout_s=0"], "timeout_s must be > 0"),
    (["weight_sync.backend=shm", "cluster.placement_strategy=STRICT_SPREAD"], "on one node"),
    (["weight_sync.backend=shm", "learner.zero_stage=3"], "zero_stage <= 2"),
])
def test_impossible_weight_sync_combinations_refused_before_start(overrides, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides", [
    ["weight_sync.backend=gloo", "weight_sync.verify=every"],
    ["weight_sync.backend=nccl", *GPU],
    ["weight_sync.backend=ipc", "cluster.colocate=true", *HALF, "rollout.num_workers=1"],
    ["rollout.tensor_parallel_size=2", "rollout.resources_per_worker.num_gpus=2", *GPU[1:]],
])
def test_workable_weight_sync_combinations_accepted(overrides):
    load_config(None, overrides)


@pytest.mark.parametrize("overrides, resolved", [
    ([], "shm"),  # a local CPU run: learner and engines share the machine
    (["cluster.address=local"], "shm"),
    (["cluster.address=auto"], "object_store"),  # joining a cluster: the actors may sit on other nodes
    (["learner.zero_stage=3"], "object_store"),  # only rank 0's full weights can be written once
    (GPU, "object_store"),
    (["weight_sync.backend=gloo"], "gloo"),
])
def test_auto_weight_sync_is_shm_on_a_local_cpu_run_only(overrides, resolved, monkeypatch):
    from pipelines.config_checks import sync_backend

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert load_config(None, []).weight_sync.backend == "auto"  # the default
    overrides = ["weight_sync.backend=auto", *overrides]  # a later backend= override wins
    assert sync_backend(load_config(None, overrides)) == resolved
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside a Ray job: not a local cluster
    inside_job = "shm" if "cluster.address=local" in overrides else "object_store"
    assert sync_backend(load_config(None, overrides)) == ("gloo" if "gloo" in str(overrides) else inside_job)


def test_missing_config_file_lists_shipped():
    with pytest.raises(ConfigError, match="tiny_cpu.yaml"):
        load_config("nope.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rollout.num_workers"])


def test_async_alias_from_overrides_and_yaml(tmp_path):
    assert load_config("smoke.yaml", ["rollout.async=true"]).rollout.async_mode is True
    f = tmp_path / "a.yaml"
    f.write_text("rollout:\n  async: true\n  max_staleness: 2\n")
    cfg = load_config(f)
    assert cfg.rollout.async_mode is True and cfg.rollout.max_staleness == 2


@pytest.mark.parametrize("overrides, needle", [
    (["rollout.async=true", "rollout.max_staleness=0"], "max_staleness >= 1"),
    (["rollout.async=true", "cluster.colocate=true"], "nothing to overlap"),
    (["cluster.colocate=true", "rollout.resources_per_worker.num_gpus=1",
      "learner.resources_per_worker.num_gpus=1"], "must be <= 1"),
    (["rollout.sleep_level=3"], "sleep_level must be 1 or 2"),
    (["data.synthetic.option_order=alphabetical"], "option_order"),
])
def test_mode_combinations_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("smoke.yaml", overrides)


@pytest.mark.parametrize("value", ["", "''", '""'])
def test_empty_override_is_the_empty_string_for_a_string_field(value):
    cfg = load_config("smoke.yaml", [f"sft.warmstart_dir={value}"])
    assert cfg.sft.warmstart_dir == ""


def test_empty_override_is_null_where_the_field_may_be_null():
    assert load_config("smoke.yaml", ["cluster.address=10.0.0.1:6379", "cluster.address="]).cluster.address is None


def test_empty_override_of_a_number_is_refused():
    with pytest.raises(ConfigError, match="rollout.num_workers"):
        load_config("smoke.yaml", ["rollout.num_workers="])


@pytest.mark.parametrize("text, needle", [("- model\n- data\n", "the top level must be a mapping.*not a list"),
                                          ("just a string\n", "unknown config key 'just a string'")])
def test_config_file_whose_root_is_not_a_mapping(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"bad.yaml: {needle}"):
        load_config(f)


def test_loaded_config_is_a_real_dataclass_with_enums():
    from pipelines.choices import PromptStyle
    from pipelines.config import MedR1Config

    cfg = load_config("tiny_cpu.yaml")
    assert type(cfg) is MedR1Config and isinstance(cfg.data.prompt_style, PromptStyle)
    assert f"{cfg.data.prompt_style}" == cfg.data.prompt_style.value  # a StrEnum formats as its value


def test_an_override_key_that_is_no_path_is_named():
    # Found by tests/test_fuzz_inputs.py: OmegaConf's dotlist parser raised IndexError on it.
    with pytest.raises(ConfigError, match=r"'\[' is not a config key"):
        load_config(None, ["[="])
