"""Reading items for pretraining (describe, then the letter of the listed term the caption uses),
the probe that scores them, and the letter-weighted pretraining loss."""
from __future__ import annotations

import re

import pytest

from tests.conftest import TEST_MAX_PIXELS, tiny_dims


def _items(seed=3, per_cell=2):
    from pipelines.data.caption_reading import reading_items
    from pipelines.data.captions import build_caption_pool

    pool = build_caption_pool(seed=seed, per_cell=per_cell)
    return pool, reading_items(pool, seed)


def test_each_caption_names_every_fact_it_records():
    from pipelines.data.captions import build_caption_pool
    from rewards.faithfulness import names_option

    for item in build_caption_pool(seed=5, per_cell=3):
        facts = dict(item.facts)
        assert facts["modality recognition"] and facts["anatomy identification"]
        assert all(names_option(item.caption, label) for label in facts.values()), (item.caption, facts)
        assert facts.get(item.question_type, item.label) == item.label or item.question_type == "modality recognition"


def test_the_letter_is_that_of_the_one_listed_term_the_caption_names():
    from pipelines.data.schema import LETTERS
    from rewards.faithfulness import names_option

    pool, items = _items()
    letters = set()
    for cap, it in zip(pool, items):
        named = [i for i, t in enumerate(it.terms) if names_option(cap.caption, t)]
        assert named == [LETTERS.index(it.letter)], (cap.caption, it.terms, it.letter)
        assert 2 <= len(it.terms) <= 4 and it.target.startswith(cap.caption)
        assert re.search(rf"(?<![A-Za-z]){it.letter}\.?$", it.target), it.target
        for i, t in enumerate(it.terms):  # the list is in the instruction, lettered
            assert f"{LETTERS[i]}){t}" in it.instruction
        letters.add(it.letter)
    assert letters == set("ABCD")  # the answer's place is shuffled
    assert {it.fact_type for it in items} == {
        "modality recognition", "anatomy identification", "disease diagnosis", "lesion grading",
        "other biological attributes"}


def test_reading_items_are_deterministic_by_seed():
    _, a = _items(seed=3)
    _, b = _items(seed=3)
    _, c = _items(seed=4)
    assert [(x.instruction, x.target) for x in a] == [(x.instruction, x.target) for x in b]
    assert [(x.instruction, x.target) for x in a] != [(x.instruction, x.target) for x in c]


def test_no_benchmark_question_or_task_prompt_appears_in_pretraining_text():
    from pipelines.data.caption_reading import LEADS, READ_INSTRUCTIONS, TEXT_INSTRUCTIONS
    from pipelines.data.captions import DESCRIBE_PROMPT
    from pipelines.data.synthetic import TEMPLATES
    from pipelines.prompts import PROMPTS

    _, items = _items(per_cell=4)
    texts = [x.instruction for x in items] + [x.target for x in items] + list(READ_INSTRUCTIONS) + list(TEXT_INSTRUCTIONS) + [DESCRIBE_PROMPT]
    questions = {t.format(mod=m).lower() for ts in TEMPLATES.values() for t in ts for m in ("CT", "MRI", "")}
    # The task prompts' fixed wording (the part after "{question}").
    tasks = {p.split("{question}")[1].strip()[:40].lower() for p in PROMPTS.values()}
    for text in texts:
        low = text.lower()
        assert not any(q in low for q in questions), text
        assert not any(t in low for t in tasks), text
        assert "<answer>" not in low and "<think>" not in low
    assert all(lead.endswith("{L}") and "{T}" in lead for lead in LEADS)


@pytest.mark.parametrize("text,letter", [("A CT scan. Letter: B", "B"), ("Mentioned: C.", "C"),
                                         ("The listed term is D.", "D"), ("no letter here", None),
                                         ("Term A. extra words", None)])
def test_last_letter(text, letter):
    from pipelines.models.reading_probe import last_letter

    assert last_letter(text) == letter


def test_score_reading_by_hand():
    from pipelines.models.reading_probe import score_reading

    opts = ["MRI", "CT", "OCT"]
    # names CT only ("OCT" is not "CT"), picks its letter, and CT is the answer
    assert score_reading("A CT scan of the Head. Letter: B", opts, "B") == {
        "correct": True, "names_answer": True, "one_named": True, "reads": True}
    # names CT, picks A: it did not read its own words; the answer was C
    assert score_reading("A CT scan. Letter: A", opts, "C") == {
        "correct": False, "names_answer": False, "one_named": True, "reads": False}
    # names two options: not counted for reading
    assert score_reading("MRI or CT. Letter: A", opts, "A")["one_named"] is False


def test_the_letter_weight_adds_the_letter_tokens_cross_entropy(tmp_path):
    import torch

    from learner.image_codec import decode_image
    from pipelines.models.pretrain import _load, caption_loss, describe_prompt
    from pipelines.models.tiny import build_tiny_model

    build_tiny_model(tmp_path, tiny_dims(num_hidden_layers=1, vision_depth=1), 3136, TEST_MAX_PIXELS)
    proc, model = _load(tmp_path)
    pool, items = _items(per_cell=1)
    batch = [items[0], pool[1], items[2]]
    with torch.no_grad():
        plain = float(caption_loss(model.eval(), proc, batch, letter_weight=0.0))
        weighted = float(caption_loss(model, proc, batch, letter_weight=2.0))
        # The letters' cross-entropy by hand: each reading row alone, the letter's log-probability.
        ces = []
        for it in (items[0], items[2]):
            text = describe_prompt(proc, it.instruction) + it.target
            enc = proc(text=[text], images=[decode_image(it.image)], return_tensors="pt")
            assert proc.tokenizer.decode(enc["input_ids"][0, -1]).strip() == it.letter
            logp = torch.log_softmax(model(**enc).logits[0, -2].float(), -1)
            ces.append(-float(logp[enc["input_ids"][0, -1]]))
    assert weighted - plain == pytest.approx(2.0 * sum(ces) / 2, rel=1e-4, abs=1e-5)


def test_reading_share_is_checked_and_old_bases_count_as_reading_zero(tmp_path):
    import json

    from omegaconf import OmegaConf

    from pipelines.config import CaptionPretrainConfig, load_config
    from pipelines.errors import ConfigError, UserError
    from pipelines.models.base_build import check_cached_base

    with pytest.raises(ConfigError, match="model.pretrain.reading"):
        load_config("configs/tiny_cpu_reasoning.yaml", ["model.pretrain.reading=1.5"])
    pre = OmegaConf.structured(CaptionPretrainConfig)
    pre.enabled = True
    old = {k: getattr(pre, k) for k in ("seed", "per_cell", "steps", "batch_size", "lr")}  # no reading keys
    (tmp_path / "medr1_pretrain.json").write_text(json.dumps(old))
    check_cached_base(tmp_path, pre)  # reading 0.0: what it was built with
    pre.reading = 0.5
    with pytest.raises(UserError, match="reading"):
        check_cached_base(tmp_path, pre)


def test_reading_probe_scores_every_record_by_question_type(tmp_path):
    from pipelines.data.synthetic import build_synthetic
    from pipelines.models.pretrain import _load
    from pipelines.models.reading_probe import reading_probe
    from pipelines.models.tiny import build_tiny_model

    build_tiny_model(tmp_path, tiny_dims(num_hidden_layers=1, vision_depth=1), 3136, TEST_MAX_PIXELS)
    proc, model = _load(tmp_path)
    records = build_synthetic(seed=0, per_cell=1, test_fraction=0.0)["train"][:6]
    table = reading_probe(model, proc, records, max_new_tokens=4, batch_size=4)
    want = {}
    for r in records:
        want[r.question_type] = want.get(r.question_type, 0) + 1
    assert {q: t["n"] for q, t in table.items()} == want
    for t in table.values():
        assert all(0.0 <= t[k] <= 1.0 for k in ("accuracy", "names_answer", "reads"))


def test_text_items_carry_no_image_and_restate_the_term_before_its_letter():
    from pipelines.data.caption_reading import phrase_pool, text_item
    from pipelines.data.captions import build_caption_pool
    from pipelines.data.schema import LETTERS
    import random

    rng, phrases = random.Random(0), phrase_pool()
    for cap in build_caption_pool(seed=3, per_cell=1):
        it = text_item(cap, rng, phrases)
        term = it.terms[LETTERS.index(it.letter)]
        assert it.image is None and cap.caption in it.instruction
        assert f"{it.letter}){term}" in it.instruction
        # the term, then its letter, last: the letter weight scores the token before the eos
        assert re.search(rf"{re.escape(term)}(\W+\w+){{0,3}}\W+{it.letter}$", it.target), it.target


def test_a_batch_mixing_text_only_and_image_items_has_one_loss(tmp_path):
    import random

    import torch

    from pipelines.data.caption_reading import phrase_pool, text_item
    from pipelines.models.pretrain import _load, caption_loss
    from pipelines.models.tiny import build_tiny_model

    build_tiny_model(tmp_path, tiny_dims(num_hidden_layers=1, vision_depth=1), 3136, TEST_MAX_PIXELS)
    proc, model = _load(tmp_path)
    pool, items = _items(per_cell=1)
    texts = [text_item(c, random.Random(1), phrase_pool()) for c in pool[:2]]
    with torch.no_grad():
        mixed = float(caption_loss(model.eval(), proc, [items[0], pool[1], *texts]))
        only_text = float(caption_loss(model, proc, texts))
    assert 0 < mixed and 0 < only_text and mixed != only_text
