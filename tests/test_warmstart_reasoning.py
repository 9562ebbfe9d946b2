"""The format warm-start's <think> text: a fixed sentence, or the base's own description per record."""
from __future__ import annotations


def test_sft_targets_take_each_records_own_reasoning(tiny_model_dir):
    from transformers import AutoTokenizer

    from pipelines.data.synthetic import build_synthetic
    from pipelines.training.sft import build_sft_samples

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = build_synthetic(per_cell=1)["train"][:6]
    own = {r.id: f"Modality: {r.modality}. Number {i}." for i, r in enumerate(recs)}
    samples = build_sft_samples(recs, tok, target="format", style="think", reasoning="fixed words", seed=0,
                                reasonings=own)
    for r, s in zip(recs, samples):
        text = tok.decode(s.completion_ids, skip_special_tokens=True)
        assert text.startswith(f"<think>{own[r.id]}</think> <answer>"), text
    fixed = build_sft_samples(recs, tok, target="format", style="think", reasoning="fixed words", seed=0)
    assert all(tok.decode(s.completion_ids).startswith("<think>fixed words</think>") for s in fixed)


def test_own_reasonings_only_when_configured(tiny_model_dir):
    from pipelines.config import load_config
    from pipelines.training.sft import own_reasonings

    assert own_reasonings(load_config("smoke.yaml"), str(tiny_model_dir), []) is None
    cfg = load_config("tiny_cpu_reasoning.yaml", ["logging.progress=false"])
    assert str(cfg.sft.warmstart_reasoning) == "own_caption"
    from pipelines.data.synthetic import build_synthetic

    recs = build_synthetic(per_cell=1)["train"][:2]
    got = own_reasonings(cfg, str(tiny_model_dir), recs)
    assert list(got) == [r.id for r in recs] and all(isinstance(v, str) for v in got.values())


def test_limit_records_spreads_over_the_list():
    from pipelines.training.sft import limit_records

    assert limit_records(list(range(10)), 3) == [0, 3, 6]
    assert limit_records(list(range(4)), None) == [0, 1, 2, 3]
    assert limit_records(list(range(4)), 9) == [0, 1, 2, 3]


def test_own_reading_answers_each_records_option_list(tiny_model_dir):
    from pipelines.config import load_config
    from pipelines.data.synthetic import build_synthetic
    from pipelines.training.sft import own_reasonings

    cfg = load_config("tiny_cpu_reasoning.yaml", ["logging.progress=false", "sft.warmstart_reasoning=own_reading"])
    recs = build_synthetic(per_cell=1)["train"][:3]
    got = own_reasonings(cfg, str(tiny_model_dir), recs)
    assert list(got) == [r.id for r in recs] and all(isinstance(v, str) for v in got.values())
