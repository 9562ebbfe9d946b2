import argparse
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pipelines.data.omnimedvqa import load_omnimedvqa, norm_answer, prepare_omnimedvqa, split_records
from pipelines.data.store import load_prepared, read_manifest
from pipelines.errors import BadRecordError, UserError

MODS = ["CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "Fundus Photography"]


def _png(path: Path, color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), color).save(path)


def _q(i, image, modality="CT(Computed Tomography)", qtype="Disease Diagnosis", gt="Cyst", key="modality_type",
       **opts):
    rec = {"question_id": f"q{i}", "dataset": "DS", "question_type": qtype, "question": f"What is shown {i}?",
           "gt_answer": gt, "image_path": image, key: modality}
    rec.update(opts or {"option_A": "Tumor", "option_B": "Cyst", "option_C": "Normal", "option_D": "Bleed"})
    return rec


def _root(tmp_path, files: dict) -> Path:
    root = tmp_path / "OmniMedVQA"
    for name, recs in files.items():
        p = root / "QA_information" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(recs if isinstance(recs, str) else json.dumps(recs))
    return root


def test_norm_answer():
    assert norm_answer("  No,  it's   NORMAL. ") == "no, it's normal"


def test_load_fields_variants_and_normalization(tmp_path):
    root = _root(tmp_path, {
        "Open-access/A.json": [
            _q(0, "Images/A/0.png"),
            _q(1, "Images/A/1.png", gt="  cyst. ", option_A="Cyst", option_B="Tumor"),  # 2 options
            _q(2, "Images/A/1.png", qtype="Modality Recognition", gt="CT", option_A="MRI", option_B="X-ray",
               option_C="CT"),
        ],
        "Restricted-access/B.json": [_q(3, "Images/B/0.png", modality="Dermoscopy", key="modality",
                                        qtype="Other Biological Attributes")],
    })
    for p in ("Images/A/0.png", "Images/A/1.png", "Images/B/0.png"):
        _png(root / p)
    recs = load_omnimedvqa(root)
    assert [r.id for r in recs] == ["omni-q0", "omni-q1", "omni-q2", "omni-q3"]
    assert [r.answer for r in recs] == ["B", "A", "C", "B"]
    assert recs[1].options == ["Cyst", "Tumor"] and recs[2].options == ["MRI", "X-ray", "CT"]
    assert recs[0].modality == "CT" and recs[3].modality == "dermoscopy"
    assert recs[3].question_type == "other biological attributes" and recs[0].source == "DS"
    assert recs[0].image.startswith(b"\x89PNG") and recs[1].image_path == "Images/A/1.png"


def test_bad_records_error_or_skip(tmp_path, caplog):
    root = _root(tmp_path, {"Open-access/A.json": [
        _q(0, "Images/ok.png"), _q(1, "Images/missing.png"), _q(2, "Images/broken.png"),
        _q(3, "Images/ok.png", gt="Fracture"), _q(4, "Images/ok.png", modality="PET"),
        _q(5, "Images/ok.png", option_A="only one"), _q(0, "Images/ok.png"),
    ]})
    _png(root / "Images/ok.png")
    (root / "Images/broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadRecordError, match=r"A.json, record 1: image file not found"):
        load_omnimedvqa(root)
    skipped = []
    recs = load_omnimedvqa(root, on_bad_record="skip", skipped=skipped)
    assert [r.id for r in recs] == ["omni-q0"]
    reasons = {s["index"]: s["reason"] for s in skipped}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "unreadable image" in reasons[2]
    assert reasons[3].startswith("answer 'Fracture' is not among the options")
    assert "unknown modality 'PET'" in reasons[4] and "need at least 2" in reasons[5]
    assert "duplicate question_id" in reasons[6]
    assert "record 3" in caplog.text


def test_malformed_json_and_missing_root(tmp_path):
    root = _root(tmp_path, {"Open-access/A.json": '[{"question": "x",}]'})
    with pytest.raises(UserError, match=r"A.json: malformed JSON at line 1, column 19"):
        load_omnimedvqa(root)
    with pytest.raises(UserError, match="no QA files"):
        load_omnimedvqa(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        load_omnimedvqa(tmp_path / "nope")


def _many(tmp_path, n_per_mod=20):
    recs = []
    for m, mod in enumerate(MODS):
        for i in range(n_per_mod):
            qtype = ["Disease Diagnosis", "Lesion Grading"][i % 2]
            recs.append(_q(m * 1000 + i, f"Images/{m}/{i}.png", modality=mod, qtype=qtype))
            recs.append(_q(m * 1000 + i + 500, f"Images/{m}/{i}.png", modality=mod, qtype=qtype))  # same image
    root = _root(tmp_path, {"Open-access/all.json": recs})
    for r in recs:
        _png(root / r["image_path"])
    return root


def test_stratified_split_by_image(tmp_path):
    recs = load_omnimedvqa(_many(tmp_path))
    splits, strata = split_records(recs, seed=0, test_fraction=0.2, split_by="modality")
    assert not {r.image_path for r in splits["train"]} & {r.image_path for r in splits["test"]}
    by_mod = Counter(r.modality for r in splits["test"])
    assert by_mod == {"CT": 8, "MRI": 8, "fundus photography": 8}  # 4 of 20 images x 2 questions
    assert strata["CT"] == {"train": 32, "test": 8}
    again, _ = split_records(recs, seed=0, test_fraction=0.2, split_by="modality")
    assert [r.id for r in again["test"]] == [r.id for r in splits["test"]]
    other, _ = split_records(recs, seed=1, test_fraction=0.2, split_by="modality")
    assert [r.id for r in other["test"]] != [r.id for r in splits["test"]]
    with pytest.raises(UserError):
        split_records(recs, split_by="dataset")


def test_cli_omnimedvqa(tmp_path):
    from pipelines.cli import prepare_data

    root = _many(tmp_path, 10)
    parser = argparse.ArgumentParser(prog="medr1")
    prepare_data.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["prepare-data", "omnimedvqa", str(root), "--out", str(out), "--split-by",
                              "question_type", "--seed", "3"])
    assert args.func(args) == 0
    m = read_manifest(out)
    assert m["total"] == 60 and m["split_by"] == "question_type" and m["seed"] == 3
    assert m["splits"]["test"]["total"] + m["splits"]["train"]["total"] == 60
    assert set(m["per_domain"]) == {"disease diagnosis", "lesion grading"}
    assert sum(m["splits"]["test"]["by_question_type"].values()) == m["splits"]["test"]["total"]
    assert len(load_prepared(out, "test")) == m["splits"]["test"]["total"]
    manifest = prepare_omnimedvqa(str(root), str(tmp_path / "o2"), seed=3)
    assert manifest["split_by"] is None and manifest["splits"]["test"]["total"] == 12
