"""Each rule of ``pipelines.config_checks.validate`` on its own: one setting that breaks exactly that
rule is refused, with that rule's reason and no other. A rule that stopped firing (or fired on the
neighbouring setting) fails here; the weight-push rules have their own table in test_config.py."""
import re

import pytest

from pipelines.config import ConfigError, load_config

HALF = ["rollout.resources_per_worker.num_gpus=0.5", "learner.resources_per_worker.num_gpus=0.5"]

RULES = [
    (["trainer.output_dir="], "trainer.output_dir is empty"),
    (["rollout.group_size=1"], "rollout.group_size must be >= 2"),
    (["rollout.num_workers=0"], "rollout.num_workers must be >= 1"),
    (["learner.num_workers=0"], "learner.num_workers must be >= 1"),
    (["reward.num_workers=0"], "reward.num_workers must be >= 1"),
    (["learner.max_tokens_per_micro_batch=-1"], "learner.max_tokens_per_micro_batch must be >= 0"),
    (["learner.zero_stage=4"], "learner.zero_stage must be one of 0, 1, 2, 3 (got 4)"),
    (["learner.lora.rank=-1"], "learner.lora: rank >= 0"),
    (["learner.lora.rank=8", "learner.lora.alpha=0"], "learner.lora: rank >= 0"),
    (["learner.lora.rank=8", "learner.lora.dropout=1.0"], "learner.lora: rank >= 0"),
    (["learner.lora.rank=8", "learner.lora.target_modules=[]"], "learner.lora: rank >= 0"),
    (["learner.lora.rank=8", "learner.zero_stage=3", "weight_sync.backend=object_store"],
     "learner.lora.rank > 0 needs learner.zero_stage <= 2"),
    (["grpo.clip_low=1.0"], "grpo.clip_low must be in [0, 1)"),
    (["grpo.clip_low=-0.1"], "grpo.clip_low must be in [0, 1)"),
    (["grpo.clip_high=-0.1"], "grpo.clip_high >= 0"),
    (["grpo.beta=-0.01"], "grpo.beta and grpo.kl_clamp must be >= 0"),
    (["grpo.kl_clamp=-1"], "grpo.beta and grpo.kl_clamp must be >= 0"),
    (["grpo.updates_per_batch=0"], "grpo.updates_per_batch and grpo.mini_batches must be >= 1"),
    (["grpo.mini_batches=0"], "grpo.updates_per_batch and grpo.mini_batches must be >= 1"),
    (["trainer.prompts_per_step=0"], "trainer.prompts_per_step must be >= 1"),
    (["rollout.async_mode=true", "rollout.max_staleness=0"], "needs rollout.max_staleness >= 1"),
    (["cluster.colocate=true", "rollout.resources_per_worker.num_gpus=0.6",
      "learner.resources_per_worker.num_gpus=0.6", "weight_sync.backend=object_store"],
     "rollout num_gpus (0.6) + learner num_gpus (0.6) must be <= 1"),
    (["cluster.colocate=true", "rollout.async_mode=true", *HALF, "weight_sync.backend=object_store"],
     "cluster.colocate=true with rollout.async_mode=true"),
    (["cluster.rollout_cores=-1"], "cluster.rollout_cores must be >= 0"),
    (["rollout.sleep_level=3"], "rollout.sleep_level must be 1 or 2 (got 3)"),
    (["reward.functions={}"], "reward.functions is empty"),
    (["trainer.keep_last_n=-1"], "trainer.keep_last_n must be >= 0"),
    (["grpo.dynamic_sampling=true", "rollout.async_mode=true"],
     "grpo.dynamic_sampling=true with rollout.async_mode=true"),
    (["grpo.dynamic_sampling_max_tries=-1"], "grpo.dynamic_sampling_max_tries must be >= 0"),
    (["grpo.overlong_buffer=-1"], "grpo.overlong_buffer must be in [0, rollout.max_new_tokens"),
    (["rollout.max_new_tokens=16", "grpo.overlong_buffer=17"], "must be in [0, rollout.max_new_tokens = 16] (got 17)"),
    (["grpo.overlong_penalty=-0.5"], "grpo.overlong_penalty >= 0 (got -0.5)"),
    (["logging.trace_images_max_mb=-1"], "logging.trace_images_max_mb must be >= 0"),
    (["logging.trace_signing_key=/nonexistent/medr1.key"], "no key file at /nonexistent/medr1.key"),
]


def problems_of(err: ConfigError) -> list[str]:
    return re.findall(r"^  - (.*)$", str(err), flags=re.M)


def test_the_default_config_breaks_no_rule():
    load_config(None, [])


@pytest.mark.parametrize("overrides, reason", RULES, ids=[" ".join(o) for o, _ in RULES])
def test_each_rule_refuses_its_setting_alone(overrides, reason):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    found = problems_of(e.value)
    assert len(found) == 1, found  # this rule, not a neighbour's
    assert reason in found[0]


@pytest.mark.parametrize("overrides", [
    ["learner.max_tokens_per_micro_batch=0"], ["learner.zero_stage=0"], ["learner.lora.rank=0"],
    ["grpo.clip_low=0.0", "grpo.clip_high=0.0"], ["grpo.beta=0", "grpo.kl_clamp=0"],
    ["rollout.async_mode=true", "rollout.max_staleness=1"], ["cluster.rollout_cores=0"],
    ["rollout.sleep_level=2"], ["trainer.keep_last_n=0"], ["grpo.dynamic_sampling_max_tries=0"],
    ["rollout.max_new_tokens=16", "grpo.overlong_buffer=16"], ["logging.trace_images_max_mb=0"],
])
def test_the_edge_of_each_range_is_accepted(overrides):
    load_config(None, overrides)


def test_a_config_that_names_the_reward_mapping_gives_all_of_it(tmp_path):
    # Merged key by key, the no-think default run also scored the think-format reward it never meant to.
    assert load_config("tiny_cpu.yaml").reward.functions == {"format_nothink": 1.0, "accuracy_strict": 1.0}
    f = tmp_path / "c.yaml"
    f.write_text("reward:\n  functions: {accuracy: 1.0}\n")
    assert load_config(f).reward.functions == {"accuracy": 1.0}
    assert load_config(None, ["reward.functions={accuracy: 2.0}"]).reward.functions == {"accuracy": 2.0}
    # one key given: that key changes, the others stay
    assert load_config(None, ["reward.functions.format=0"]).reward.functions == {"format": 0.0,
                                                                                  "accuracy_strict": 1.0}
    assert load_config(f, ["reward.functions.format=0.5"]).reward.functions == {"accuracy": 1.0, "format": 0.5}
