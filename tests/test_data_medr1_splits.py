import argparse
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pipelines.data.medr1_splits import domain_of, load_medr1_file, parse_problem, prepare_medr1_splits, split_of
from pipelines.data.schema import LETTERS
from pipelines.data.store import load_prepared, read_manifest
from pipelines.errors import BadRecordError, UserError

# shared/ sits beside the checkout (CI clones main next to it); /work/shared on the dev machines.
SAMPLES = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "medr1-splits-sample",
                            Path("/work/shared/data/medr1-splits-sample")) if p.is_dir()),
               Path("/work/shared/data/medr1-splits-sample"))
XRAY, GRADING = SAMPLES / "X-Ray_test.json", SAMPLES / "Lesion Grading_test.json"
needs_samples = pytest.mark.skipif(not XRAY.is_file(), reason="Med-R1 sample files not available")


@needs_samples
@pytest.mark.parametrize("path,modality,qtype,letters", [
    (XRAY, "X-ray", "unknown", {"A": 431, "B": 421, "C": 383, "D": 380}),
    (GRADING, "unknown", "lesion grading", {"A": 108, "B": 107, "C": 122, "D": 99}),
])
def test_real_sample_files_parse_completely(path, modality, qtype, letters):
    raw = json.loads(path.read_text())
    missing = []
    recs = load_medr1_file(path, allow_missing_images=True, missing=missing)
    assert len(recs) == len(raw) and len(missing) == len(raw)
    for rec, r in zip(recs, raw):
        assert 2 <= len(rec.options) <= 4
        assert rec.answer in LETTERS[: len(rec.options)]
        assert rec.modality == modality and rec.question_type == qtype
        assert rec.image == b"" and rec.image_path == r["image"]
        # re-assembling the parsed pieces gives back the problem text
        assert f"{rec.question} " + ", ".join(f"{LETTERS[i]}){o}" for i, o in enumerate(rec.options)) \
            == r["problem"].strip()
    counts = Counter(r.answer for r in recs)
    print(path.name, dict(sorted(counts.items())))
    assert dict(counts) == letters and sum(counts.values()) == len(raw)


@needs_samples
def test_tricky_real_records():
    x = load_medr1_file(XRAY, allow_missing_images=True)
    assert x[0].options == ["X-ray", "MRI", "Echocardiogram", "Mammography"] and x[0].answer == "D"
    assert x[0].source == "MIAS" and x[0].id == "x-ray-test-00000"
    assert x[880].question == "Is there any anomaly or irregularity in this image?"
    assert x[880].options == ["No, It's normal", "Yes."] and x[880].answer == "A"
    assert x[865].options == ["Yes.", "No, It's normal"]
    assert x[32].options == ["Doppler ultrasound", "Barium swallow", "x_ray.",
                             "Positron Emission Tomography (PET) scan"]
    assert x[1100].options == ["Uterus (for females)", "Spleen", "Gallbladder", "Lungs"]
    g = load_medr1_file(GRADING, allow_missing_images=True)
    assert g[0].options == ["It's a good retinal image.", "It's a outlier retinal image.",
                            "it's a bad retinal image."] and g[0].answer == "C"
    assert g[2].question.startswith("Retinal image quality assessment (IQA) is a crucial process")
    assert g[2].question.endswith("What specific image quality of this image?")
    assert g[62].options[0] == "Stage IIIa of Squamous cell carcinoma of the left hilum."
    assert len(g[62].options) == 4


def test_parse_problem_edge_cases():
    assert parse_problem("Grade A) or B)? A)x, y., B)z") == ("Grade A) or B)?", ["x, y.", "z"])
    assert parse_problem("Q? A)one,B)two, C)three (C) ok") == ("Q?", ["one", "two", "three (C) ok"])
    with pytest.raises(ValueError, match="no options"):
        parse_problem("What is this? A)only one")


@pytest.mark.parametrize("name,expected", [
    ("MR (Mag-netic Resonance Imaging)_test.json", ("MRI", "unknown")),
    ("OCT (Optical Coherence Tomography_test.json", ("OCT", "unknown")),
    ("X-Ray_test.json", ("X-ray", "unknown")),
    ("CT(Computed Tomography)_train.json", ("CT", "unknown")),
    ("Der (Dermoscopy)_test.json", ("dermoscopy", "unknown")),
    ("Fundus Photography_test.json", ("fundus photography", "unknown")),
    ("Microscopy Images_test.json", ("microscopy", "unknown")),
    ("US_test.json", ("ultrasound", "unknown")), ("Ultrasound_test.json", ("ultrasound", "unknown")),
    ("Lesion Grading_test.json", ("unknown", "lesion grading")),
    ("Modality Recognition_train.json", ("unknown", "modality recognition")),
    ("Other Biological Attributes_test.json", ("unknown", "other biological attributes")),
    ("unknown_train.json", ("unknown", "unknown")),
    ("CT(Computed Tomography)_val.json", ("CT", "unknown")),
    ("Lesion Grading_validation.json", ("unknown", "lesion grading")),
])
def test_domain_from_file_name(name, expected):
    assert domain_of(name) == expected


def test_split_from_file_name():
    assert split_of("X-Ray_test.json") == "test" and split_of("unknown_train.json") == "train"
    assert split_of("X-Ray.json") is None
    # a validation file is held out with the test files, never trained on
    assert split_of("CT(Computed Tomography)_val.json") == "test"
    assert split_of("Lesion Grading_Validation.json") == "test" and split_of("US-val.json") == "test"
    assert split_of("Microscopy Images_training.json") is None  # only the exact suffixes count
    with pytest.raises(UserError, match="--modality or --question-type"):
        domain_of("PET_test.json")


def _png(path: Path, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), (0, 90, 0)).save(path, format=fmt)


def _write(tmp_path, name, records):
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def _item(image, problem="What is it? A)a, B)b, C)c", solution="<answer> B </answer>"):
    return {"image": image, "problem": problem, "solution": solution}


def test_images_embedded_and_overrides(tmp_path):
    _png(tmp_path / "img" / "Images" / "DS" / "a.png")
    _png(tmp_path / "img" / "Images" / "DS" / "b.jpg", "JPEG")
    f = _write(tmp_path, "whatever.json", [_item("Images/DS/a.png"), _item("Images/DS/b.jpg")])
    recs = load_medr1_file(f, tmp_path / "img", modality="Fundus Photography", question_type="Lesion Grading")
    assert [r.modality for r in recs] == ["fundus photography"] * 2 and recs[0].question_type == "lesion grading"
    assert all(r.image.startswith(b"\x89PNG") for r in recs) and recs[0].source == "DS"
    assert Image.open(io.BytesIO(recs[1].image)).size == (10, 10)


def test_bad_records_error_or_skip(tmp_path, caplog):
    _png(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"garbage")
    f = _write(tmp_path, "CT_train.json", [
        _item("ok.png"), _item("gone.png"), _item("broken.png"),
        _item("ok.png", solution="<answer> D </answer>"), _item("ok.png", problem="No options here"),
        {"image": "ok.png"},
    ])
    with pytest.raises(BadRecordError, match=r"CT_train.json, record 1: image file not found"):
        load_medr1_file(f, tmp_path / "img")
    skipped = []
    recs = load_medr1_file(f, tmp_path / "img", on_bad_record="skip", skipped=skipped)
    assert len(recs) == 1
    assert [s["index"] for s in skipped] == [1, 2, 3, 4, 5]
    reasons = [s["reason"] for s in skipped]
    assert "image file not found" in reasons[0] and "unreadable image" in reasons[1]
    assert "answer 'D' is not among the options A-C" in reasons[2]
    assert "no options found" in reasons[3] and "problem, solution" in reasons[4]
    assert "CT_train.json, record 2" in caplog.text


def test_malformed_json_names_file_and_position(tmp_path):
    f = tmp_path / "X-Ray_test.json"
    f.write_text('[{"image": "a.png",\n "problem": }]')
    with pytest.raises(UserError, match=r"X-Ray_test.json: malformed JSON at line 2, column 13"):
        load_medr1_file(f, allow_missing_images=True)
    f.write_text('{"image": "a.png"}')
    with pytest.raises(UserError, match="expected a JSON list"):
        load_medr1_file(f, allow_missing_images=True)


def test_cli_medr1_splits(tmp_path):
    from pipelines.cli import prepare_data

    _png(tmp_path / "img" / "ok.png")
    tr = _write(tmp_path, "US_train.json", [_item("ok.png"), _item("gone.png")])
    te = _write(tmp_path, "Lesion Grading_test.json", [_item("ok.png", solution="<answer> A </answer>")])
    parser = argparse.ArgumentParser(prog="medr1")
    prepare_data.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["prepare-data", "medr1-splits", str(tr), str(te), "--image-root",
                              str(tmp_path / "img"), "--out", str(out), "--on-bad-record", "skip"])
    assert args.func(args) == 0
    m = read_manifest(out)
    assert m["splits"]["train"]["total"] == 1 and m["splits"]["test"]["total"] == 1
    assert m["skipped"]["count"] == 1 and m["skipped"]["records"][0]["index"] == 1
    assert m["splits"]["test"]["by_question_type"] == {"lesion grading": 1}
    assert load_prepared(out, "train")[0].modality == "ultrasound"
    # allow-missing keeps the record with its path and counts it
    args = parser.parse_args(["prepare-data", "medr1-splits", str(tr), "--image-root", str(tmp_path / "img"),
                              "--out", str(out), "--allow-missing-images", "--split", "test"])
    args.func(args)
    m = read_manifest(out)
    assert m["splits"]["test"]["total"] == 2 and m["missing_images"] == 1
    assert not (out / "train.parquet").exists()  # the earlier build's train split is gone
    assert load_prepared(out, "test")[1].image_path == "gone.png"
    with pytest.raises(UserError, match="--image-root"):
        prepare_medr1_splits([str(tr)], str(out))


def test_a_val_file_is_held_out_with_the_test_files(tmp_path):
    _png(tmp_path / "img" / "ok.png")
    tr = _write(tmp_path, "US_train.json", [_item("ok.png")])
    va = _write(tmp_path, "US_val.json", [_item("ok.png"), _item("ok.png")])
    m = prepare_medr1_splits([str(tr), str(va)], str(tmp_path / "out"), str(tmp_path / "img"))
    assert m["splits"]["train"]["total"] == 1 and m["splits"]["test"]["total"] == 2
    assert {r.modality for r in load_prepared(tmp_path / "out", "test")} == {"ultrasound"}
