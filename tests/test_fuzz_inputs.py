"""Property-based fuzzing (hypothesis) of what reads user input: the Med-R1 split loader, the
OmniMedVQA loader, the config override parser, and the rewards. Each either returns a valid
result or refuses with the project's error naming the file/record/key: never another exception,
never a hang."""
from __future__ import annotations

import json
import os
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.data.medr1_splits import load_medr1_file, parse_problem
from pipelines.data.omnimedvqa import _record
from pipelines.data.schema import LETTERS
from pipelines.errors import BadRecordError, ConfigError
from rewards import available_rewards
from rewards.combine import combined_scores

# MEDR1_FUZZ_EXAMPLES=5000 for a deeper run than CI's.
N = int(os.environ.get("MEDR1_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])

# Text that hits the parsers' markers often: option letters, ')' and ',' next to each other.
MARKERS = ["A)", "B)", "C)", "D)", "E)", "H)", "I)", ", ", " ", ",", "(", ")", "x", "Yes", ".", "\n", "\x00",
           "<answer>", "</answer>", "é", "\ud7ff"]
marker_text = st.lists(st.sampled_from(MARKERS), max_size=40).map("".join)
any_text = st.one_of(marker_text, st.text(max_size=80))
json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                    any_text),
                          lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)


# ----------------------------------------------------------------------------- Med-R1 splits
option_text = st.text(alphabet=string.ascii_letters + string.digits + " -/%.()", min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s.strip() and not any(f"{c})" in s for c in LETTERS))


@FUZZ
@given(question=st.text(alphabet=string.ascii_letters + " ?", min_size=1, max_size=40).map(str.strip)
       .filter(bool), options=st.lists(option_text, min_size=2, max_size=8))
def test_parse_problem_round_trips_what_the_paper_writes(question, options):
    problem = f"{question} " + ", ".join(f"{LETTERS[k]}){o}" for k, o in enumerate(options))
    assert parse_problem(problem) == (question, options)


@FUZZ
@given(problem=any_text)
def test_parse_problem_returns_options_or_says_why(problem):
    try:
        question, options = parse_problem(problem)
    except ValueError:
        return
    assert question and 2 <= len(options) <= len(LETTERS) and all(options)


@FUZZ
@given(records=st.lists(st.one_of(json_value, st.fixed_dictionaries(
    {"image": st.sampled_from(["images/a.png", "../a.png", "", "nope.png"]),
     "problem": st.one_of(marker_text, st.just("Q? A)CT, B)MRI")),
     "solution": st.sampled_from(["<answer> A </answer>", "B", "<answer>Z</answer>", ""])})), max_size=6))
def test_medr1_loader_never_fails_otherwise(tmp_path_factory, records):
    root = tmp_path_factory.mktemp("medr1")
    (root / "images").mkdir()
    from tests.conftest import noise_png
    (root / "images" / "a.png").write_bytes(noise_png(0, (8, 8)))
    f = root / "CT_test.json"
    f.write_text(json.dumps(records))
    skipped: list = []
    kept = load_medr1_file(f, root, on_bad_record="skip", skipped=skipped)
    assert len(kept) + len(skipped) == len(records)
    for r in kept:
        r.validate(allow_unknown=True)
        assert r.image and r.answer in LETTERS[:len(r.options)]
    if skipped:
        with pytest.raises(BadRecordError, match=rf"{f}, record {skipped[0]['index']}: "):
            load_medr1_file(f, root)


# ----------------------------------------------------------------------------- OmniMedVQA
omni_raw = st.one_of(json_value, st.fixed_dictionaries(
    {"question": any_text, "gt_answer": st.sampled_from(["CT", "MRI", "ct.", "", None, 3]),
     "image_path": st.sampled_from(["Images/a.png", "../x.png", "/etc/hostname", "Images/missing.png"]),
     "modality_type": st.sampled_from(["CT", "MR", "Nope", None]),
     "question_type": st.sampled_from(["Modality Recognition", "Anatomy Identification", "?"])},
    optional={"option_A": any_text, "option_B": st.sampled_from(["CT", "MRI", ""]), "option_C": any_text,
              "option_I": any_text, "question_id": json_value}))


@FUZZ
@given(raw=omni_raw)
def test_omnimedvqa_record_is_valid_or_named(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("omni")
    (root / "Images").mkdir()
    from tests.conftest import noise_png
    (root / "Images" / "a.png").write_bytes(noise_png(0, (8, 8)))
    try:
        rec = _record(raw, root, root / "D.json", 7, {})
    except BadRecordError as e:
        assert str(e).startswith(f"{root / 'D.json'}, record 7: ")
        return
    rec.validate()
    assert rec.answer in LETTERS[:len(rec.options)] and len(rec.options) <= 8


# ----------------------------------------------------------------------------- config overrides
KEYS = ["rollout.num_workers", "trainer.output_dir", "sft.warmstart_dir", "grpo.beta", "data.modalities",
        "trainer.resume_from", "rollout.async", "learner.adam_betas", "model.path", "nope", "rollout", "a.b.c",
        "rollout.resources_per_worker.custom", "reward.weights", "", ".", "trainer..seed"]
VALUES = ["", "''", "null", "1", "-1", "1e309", "nan", "true", "[1,2", "{a: 1}", "[]", "{}", "${oc.env:HOME}",
          "${trainer.seed}", "'quoted", "x" * 300, "\x00", "é", "[CT, MRI]", "&a [1]", "*a", "!!python/object:os.system"]


@settings(max_examples=N // 4, deadline=None)  # a full load_config per example: ~0.2 s each
@given(pairs=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)),
                                st.one_of(st.sampled_from(VALUES), st.text(max_size=20))), min_size=1, max_size=3))
def test_overrides_load_or_name_the_override(pairs):
    from pipelines.config import load_config

    items = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config("smoke.yaml", items)
    except ConfigError as e:
        assert str(e).strip(), "a refusal says why"
        return
    assert cfg.trainer.output_dir  # a loaded config is a whole, validated one


# ----------------------------------------------------------------------------- rewards
@settings(max_examples=N, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=6), answers=st.data())
def test_every_reward_is_total_and_bounded(texts, answers):
    ans = answers.draw(st.lists(st.one_of(st.sampled_from(list(LETTERS) + ["<answer> B </answer>"]), any_text),
                                min_size=len(texts), max_size=len(texts)))
    for name in available_rewards():
        [score] = {s.total for s in combined_scores(texts[:1], ans[:1], {name: 1.0})} or [0.0]
        assert 0.0 <= score <= 1.0, (name, texts[0], ans[0], score)
    scores = combined_scores(texts, ans, {name: 1.0 for name in available_rewards()})
    assert len(scores) == len(texts) and all(0.0 <= s.total <= len(available_rewards()) for s in scores)


@pytest.mark.parametrize("piece", ["<think>", "<answer>", "<answer>A", "</think><answer>", "A)", " \n"])
def test_rewards_stay_linear_on_megabyte_completions(piece):
    text = piece * (1_000_000 // len(piece))
    t0 = time.perf_counter()
    combined_scores([text], ["A"], {name: 1.0 for name in available_rewards()})
    assert time.perf_counter() - t0 < 5.0
