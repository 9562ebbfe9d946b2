import argparse
import hashlib
import io
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipelines.data.schema import LETTERS, MODALITIES, QUESTION_TYPES
from pipelines.data.store import load_prepared, read_manifest
from pipelines.data.synthetic import EXTRA_DISTRACTORS, SPECS, TEMPLATES, build_cell, build_synthetic


@pytest.fixture(scope="module")
def default_build():
    t0 = time.perf_counter()
    splits = build_synthetic(seed=0)
    return splits, time.perf_counter() - t0


def test_default_size_and_speed(default_build):
    splits, seconds = default_build
    assert len(splits["train"]) == 400 and len(splits["test"]) == 80
    assert seconds < 30, f"build took {seconds:.1f}s"
    recs = splits["train"] + splits["test"]
    cells = Counter((r.modality, r.question_type) for r in recs)
    assert set(cells) == {(m, q) for m in MODALITIES for q in QUESTION_TYPES}
    assert set(cells.values()) == {12}
    test_cells = Counter((r.modality, r.question_type) for r in splits["test"])
    assert set(test_cells.values()) == {2}  # 20% of each cell
    for r in recs:
        r.validate()
        assert 2 <= len(r.options) <= 4 and len(set(r.options)) == len(r.options)
        assert r.source == "synthetic" and r.id.startswith("syn-")
        assert Image.open(io.BytesIO(r.image)).size == (112, 112)
    assert {r.id for r in recs} >= {"syn-ct-dd-0007", "syn-micro-oba-0011"}


def test_answer_letters_balanced(default_build):
    recs = default_build[0]["train"] + default_build[0]["test"]
    letters = Counter(r.answer for r in recs)
    assert set(letters) == set("ABCD")
    assert min(letters.values()) >= 0.15 * len(recs) and max(letters.values()) <= 0.35 * len(recs)
    four = Counter(r.answer for r in recs if len(r.options) == 4)
    n4 = sum(four.values())
    assert all(abs(four[c] - n4 / 4) <= 0.1 * n4 for c in "ABCD")
    assert Counter(len(r.options) for r in recs).keys() == {2, 3, 4}


def test_answers_come_from_drawn_classes_only(default_build):
    for r in default_build[0]["train"]:
        extras = EXTRA_DISTRACTORS.get((r.modality, r.question_type), ())
        assert r.answer_text not in extras


def test_templates_paraphrased(default_build):
    recs = default_build[0]["train"] + default_build[0]["test"]
    for qtype in QUESTION_TYPES:
        assert len({r.question for r in recs if r.question_type == qtype}) >= 3
    assert all(len(t) >= 3 for t in TEMPLATES.values())


def test_split_by_image(default_build):
    train, test = default_build[0]["train"], default_build[0]["test"]
    h = lambda rs: {hashlib.sha256(r.image).hexdigest() for r in rs}  # noqa: E731
    assert not h(train) & h(test)
    assert len(h(train)) == len(train)


def test_deterministic_and_seed_dependent(tmp_path):
    from pipelines.data.synthetic import prepare_synthetic

    prepare_synthetic(str(tmp_path / "a"), seed=5, per_cell=2, image_size=56, test_fraction=0.5)
    prepare_synthetic(str(tmp_path / "b"), seed=5, per_cell=2, image_size=56, test_fraction=0.5)
    prepare_synthetic(str(tmp_path / "c"), seed=6, per_cell=2, image_size=56, test_fraction=0.5)
    for split in ("train", "test"):
        a, b, c = ((tmp_path / d / f"{split}.parquet").read_bytes() for d in "abc")
        assert a == b and a != c
    assert read_manifest(tmp_path / "a")["seed"] == 5


def test_every_class_is_drawn_distinctly():
    """Within a cell, images of different answers differ a lot more than images of the same answer
    (mean 16x16 picture per class): a crude check that the feature is salient at low resolution."""
    for modality in ("CT", "fundus photography", "microscopy"):
        recs = build_cell(modality, "disease diagnosis", 24, 1, 112)
        by = {}
        for r in recs:
            a = np.asarray(Image.open(io.BytesIO(r.image)).resize((16, 16)), dtype=np.float32) / 255
            by.setdefault(r.answer_text, []).append(a)
        means = {k: np.mean(v, 0) for k, v in by.items()}
        keys = sorted(means)
        between = min(np.abs(means[a] - means[b]).mean() for i, a in enumerate(keys) for b in keys[i + 1:])
        assert between > 0.004, (modality, between)
        assert len(keys) == len(SPECS[modality].diseases)


def test_letters_map_to_answers(default_build):
    for r in default_build[0]["test"]:
        assert r.answer in LETTERS[: len(r.options)]
        if r.question_type == "modality recognition":
            assert r.answer_text == SPECS[r.modality].label


def test_cli_synthetic_with_preview(tmp_path, capsys):
    from pipelines.cli import prepare_data

    parser = argparse.ArgumentParser(prog="medr1")
    prepare_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare-data", "synthetic", "--out", str(tmp_path), "--per-cell", "2",
                              "--seed", "1", "--preview", "--test-fraction", "0.5"])
    assert args.func(args) == 0
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    m = read_manifest(tmp_path)
    assert m["total"] == 80 and m["splits"]["test"]["total"] == 40 and m["seed"] == 1
    assert "--per-cell 2" in m["command"] and m["command"].startswith("medr1 prepare-data synthetic")
    assert sum(m["by_answer_letter"].values()) == 80
    assert len(load_prepared(tmp_path, "train")) == 40
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError):
        build_synthetic(per_cell=0)
    with pytest.raises(ValueError):
        build_synthetic(test_fraction=1.0)


def test_fixed_option_order_lists_options_in_category_order():
    from pipelines.data.synthetic import _classes

    for modality, qtype in (("CT", "lesion grading"), ("MRI", "anatomy identification"),
                            ("X-ray", "modality recognition")):
        shuffled = build_cell(modality, qtype, 24, seed=0, image_size=56)
        fixed = build_cell(modality, qtype, 24, seed=0, image_size=56, option_order="fixed")
        pool = list(_classes(SPECS[modality], qtype)) + list(EXTRA_DISTRACTORS.get((modality, qtype), ()))
        for a, b in zip(shuffled, fixed):
            assert a.image == b.image and sorted(a.options) == sorted(b.options), "same images, same option sets"
            assert b.options == sorted(b.options, key=pool.index)
            # the letter still names the drawn answer
            assert b.options[LETTERS.index(b.answer)] == a.options[LETTERS.index(a.answer)]
    with pytest.raises(ValueError, match="option_order"):
        build_synthetic(per_cell=1, option_order="alphabetical")


def test_canonical_option_order_gives_each_class_one_letter():
    from pipelines.data.synthetic import _classes

    for modality, qtype in (("CT", "lesion grading"), ("dermoscopy", "lesion grading"),
                            ("microscopy", "other biological attributes"), ("OCT", "modality recognition")):
        shuffled = build_cell(modality, qtype, 24, seed=0, image_size=56)
        canon = build_cell(modality, qtype, 24, seed=0, image_size=56, option_order="canonical")
        classes = list(_classes(SPECS[modality], qtype))
        for a, b in zip(shuffled, canon):
            assert a.image == b.image, "same images in every option order"
            assert b.options == classes, "every class of the category, never an extra distractor"
            truth = a.options[LETTERS.index(a.answer)]
            assert b.answer == LETTERS[classes.index(truth)]


def test_each_use_of_the_seed_depends_on_it():
    # The builder draws twice from its seed: the images/questions of a cell, and which of a cell's
    # images go to test. Each must move with the seed on its own (whole-file inequality would pass
    # with one of them fixed).
    def cells(seed):
        return {(m, q): build_cell(m, q, 6, seed, 56) for m in ("CT", "fundus photography")
                for q in ("disease diagnosis", "lesion grading")}

    a, b = cells(0), cells(1)
    assert all([r.image for r in a[k]] != [r.image for r in b[k]] for k in a)

    def test_ids(seed):
        return {r.id for r in build_synthetic(seed=seed, per_cell=6, image_size=56, test_fraction=0.5)["test"]}

    ids = [test_ids(s) for s in range(3)]
    assert ids[0] != ids[1] and ids[1] != ids[2]
    assert all(len(x) == 3 * len(MODALITIES) * len(QUESTION_TYPES) for x in ids)

