import hashlib
import io

import pytest
from PIL import Image

from pipelines.data.schema import VQARecord
from pipelines.data.store import load_prepared, read_manifest, to_png_bytes, write_prepared
from pipelines.errors import BadRecordError, UserError


def _img(fmt="PNG", color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt)
    return buf.getvalue()


def _rec(i, image, answer="A", modality="CT", qtype="disease diagnosis"):
    return VQARecord(id=f"r{i}", image=image, question=f"Q{i}?", options=["a", "b, c.", "d"], answer=answer,
                     modality=modality, question_type=qtype, source="unit", image_path=f"img/{i}.png")


def test_roundtrip_and_manifest(tmp_path):
    png, jpg = _img(), _img("JPEG")
    splits = {"train": [_rec(0, png), _rec(1, jpg, "B", "MRI")], "test": [_rec(2, b"", "C", "unknown", "unknown")]}
    m = write_prepared(tmp_path, splits, {"command": "x", "seed": 3, "skipped": [{"file": "f", "index": 1,
                                                                                 "reason": "r"}]})
    assert m == read_manifest(tmp_path)
    assert m["total"] == 3 and m["seed"] == 3 and m["command"] == "x"
    assert m["skipped"] == {"count": 1, "records": [{"file": "f", "index": 1, "reason": "r"}]}
    assert m["splits"]["train"]["by_modality"] == {"CT": 1, "MRI": 1}
    assert m["by_answer_letter"] == {"A": 1, "B": 1, "C": 1}
    assert sum(m["by_question_type"].values()) == 3 and m["missing_images"] == 1
    train = load_prepared(tmp_path, "train")
    assert [r.id for r in train] == ["r0", "r1"] and train[0].image == png
    assert train[1].image.startswith(b"\x89PNG")  # the JPEG was converted
    assert train[0].options == ["a", "b, c.", "d"] and train[0].image_path == "img/0.png"
    assert load_prepared(tmp_path, "test")[0].image == b""


def test_parquet_columns_and_hf_datasets(tmp_path):
    import pyarrow.parquet as pq

    png = _img()
    write_prepared(tmp_path, {"test": [_rec(0, png)]}, {})
    t = pq.read_table(tmp_path / "test.parquet")
    assert t.column_names == ["id", "image", "image_path", "image_sha256", "question", "options", "answer",
                              "modality", "question_type", "source"]
    assert t.column("image_sha256")[0].as_py() == hashlib.sha256(png).hexdigest()
    from datasets import Dataset

    ds = Dataset.from_parquet(str(tmp_path / "test.parquet"))
    assert ds[0]["options"] == ["a", "b, c.", "d"] and ds[0]["answer"] == "A"


def test_load_prepared_errors_say_what_exists(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_prepared(tmp_path / "nope", "train")
    write_prepared(tmp_path, {"test": [_rec(0, _img())]}, {})
    with pytest.raises(UserError, match="no split 'train'; splits present: test"):
        load_prepared(tmp_path, "train")
    with pytest.raises(UserError, match="manifest.json not found"):
        read_manifest(tmp_path / "nope")


def test_write_rejects_invalid_and_duplicate_records(tmp_path):
    with pytest.raises(UserError, match="answer 'E'"):
        write_prepared(tmp_path, {"test": [_rec(0, _img(), answer="E")]}, {})
    with pytest.raises(UserError, match="duplicate record id 'r0'"):
        write_prepared(tmp_path, {"train": [_rec(0, _img())], "test": [_rec(0, _img())]}, {})


def test_to_png_bytes_errors(tmp_path):
    with pytest.raises(BadRecordError, match="image file not found"):
        to_png_bytes(tmp_path / "missing.png", "f.json", 4)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadRecordError, match=r"f.json, record 4: unreadable image"):
        to_png_bytes(bad, "f.json", 4)
    assert to_png_bytes(_img("JPEG")).startswith(b"\x89PNG")
