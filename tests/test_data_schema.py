import logging

import pytest

from pipelines.data.schema import (
    MODALITIES,
    QUESTION_TYPES,
    VQARecord,
    handle_bad_record,
    normalize_modality,
    normalize_question_type,
    try_normalize_modality,
)
from pipelines.errors import BadRecordError


@pytest.mark.parametrize("alias,canon", [
    ("X-Ray", "X-ray"), ("xray", "X-ray"), ("MR", "MRI"), ("Magnetic Resonance Imaging", "MRI"),
    ("MR (Mag-netic Resonance Imaging)", "MRI"), ("Fundus Photography", "fundus photography"),
    ("Optical Coherence Tomography", "OCT"), ("OCT (Optical Coherence Tomography", "OCT"),
    ("Dermoscopy", "dermoscopy"), ("Der (Dermoscopy)", "dermoscopy"), ("Microscopy Images", "microscopy"),
    ("Ultrasound", "ultrasound"), ("US", "ultrasound"), ("CT(Computed Tomography)", "CT"), ("ct", "CT"),
])
def test_normalize_modality(alias, canon):
    assert normalize_modality(alias) == canon


def test_canonical_names_map_to_themselves():
    assert [normalize_modality(m) for m in MODALITIES] == list(MODALITIES)
    assert [normalize_question_type(q) for q in QUESTION_TYPES] == list(QUESTION_TYPES)


@pytest.mark.parametrize("alias,canon", [
    ("Modality Recognition", "modality recognition"), ("Anatomy Identification", "anatomy identification"),
    ("Disease Diagnosis", "disease diagnosis"), ("Lesion Grading", "lesion grading"),
    ("Other Biological Attributes", "other biological attributes"), ("lesion_grading", "lesion grading"),
])
def test_normalize_question_type(alias, canon):
    assert normalize_question_type(alias) == canon


def test_unknown_names_raise_with_the_known_list():
    with pytest.raises(ValueError, match="unknown modality 'PET'.*CT"):
        normalize_modality("PET")
    assert try_normalize_modality("Lesion Grading") is None
    with pytest.raises(ValueError, match="unknown question type"):
        normalize_question_type("counting")


def _rec(**kw):
    base = dict(id="a", image=b"", question="Q?", options=["x", "y", "z"], answer="B", modality="CT",
                question_type="disease diagnosis", source="s")
    base.update(kw)
    return VQARecord(**base)


def test_validate_accepts_a_good_record():
    assert _rec().validate().answer_text == "y"


@pytest.mark.parametrize("kw,msg", [
    (dict(answer="D"), "answer 'D' is not among the option letters A, B, C"),
    (dict(options=["x"], answer="A"), "1 options"),
    (dict(options=list("abcdefghi"), answer="A"), "9 options"),
    (dict(modality="PET"), "unknown modality 'PET'"),
    (dict(question_type="counting"), "unknown question type"),
    (dict(question=" "), "empty question"),
    (dict(modality="unknown"), "unknown modality 'unknown'"),
])
def test_validate_rejects(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _rec(**kw).validate()


def test_unknown_only_when_allowed():
    _rec(modality="unknown", question_type="unknown").validate(allow_unknown=True)


def test_handle_bad_record(caplog):
    err = BadRecordError("f.json", 3, "broken")
    with pytest.raises(BadRecordError, match="f.json, record 3: broken"):
        handle_bad_record(err, "error", [])
    skipped = []
    with caplog.at_level(logging.WARNING):
        handle_bad_record(err, "skip", skipped)
    assert skipped == [{"file": "f.json", "index": 3, "reason": "broken"}]
    assert "f.json, record 3: broken" in caplog.text
