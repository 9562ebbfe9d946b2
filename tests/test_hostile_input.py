"""Hostile input: each refused with an error naming the file and record (or skipped and counted
with on_bad_record=skip), quickly, without decoding or reading more than a bound."""
from __future__ import annotations

import json
import struct
import time
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learner.image_codec import MAX_DECODE_PIXELS, decode_image, to_png
from pipelines.config import load_config
from pipelines.data.medr1_splits import load_medr1_file
from pipelines.data.omnimedvqa import load_omnimedvqa
from pipelines.data.store import load_prepared, write_prepared
from pipelines.errors import BadRecordError, ConfigError, UserError
from pipelines.models.checks import refuse_unsafe_model
from tests.conftest import noise_png

GOOD_PROBLEM = "Which modality is shown? A)CT, B)MRI, C)X-ray"
GOOD = {"image": "images/a.png", "problem": GOOD_PROBLEM, "solution": "<answer> B </answer>"}


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height greyscale pixels (a decompression bomb's
    header: the pixel data would only be inflated when decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(10_000, 10_000), (100_000, 100_000), (1, MAX_DECODE_PIXELS + 1)])
def test_huge_and_bomb_images_are_refused_before_decoding(width, height):
    data = png_claiming(width, height)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="refused before decoding|DecompressionBomb"):
        decode_image(data)
    with pytest.raises(ValueError, match="refused before decoding|DecompressionBomb"):
        to_png(data)
    assert time.perf_counter() - t0 < 1.0  # decoding 100M+ pixels would take seconds and GBs


def test_images_over_the_processor_bound_are_refused_before_decoding():
    with pytest.raises(ValueError, match=r"2000x2000 has 4,000,000 pixels, over the limit of 802,816 \(64x max_pix"):
        decode_image(png_claiming(2000, 2000), max_pixels=12544)
    assert decode_image(noise_png(1), max_pixels=12544).size == (112, 112)  # a normal one still decodes


def test_bomb_image_in_a_split_file_names_file_and_record(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(noise_png(0))
    (tmp_path / "images" / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    f = tmp_path / "CT_test.json"
    f.write_text(json.dumps([GOOD, {**GOOD, "image": "images/bomb.png"}]))
    with pytest.raises(BadRecordError, match=rf"{f}, record 1: unreadable image .*bomb.png.*refused before decoding"):
        load_medr1_file(f, tmp_path)
    skipped = []
    assert len(load_medr1_file(f, tmp_path, on_bad_record="skip", skipped=skipped)) == 1
    assert [s["index"] for s in skipped] == [1]


def _split_file(tmp_path, records, name="CT_test.json"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "a.png").write_bytes(noise_png(0))
    f = tmp_path / name
    f.write_text(json.dumps(records))
    return f


@pytest.mark.parametrize("bad,reason", [
    ({"problem": "Q? " + "x" * 10_000_000 + " A)CT, B)MRI"}, r"problem of 10,000,\d+ / solution"),  # 10 MB
    ({"problem": "Q? " + ", ".join(f"{chr(65 + k)})opt{k}" for k in range(26))}, "more than 8 options"),
    ({"problem": "Q?\x00 A)CT, B)MRI"}, "NUL byte"),
    ({"solution": "<answer> Z </answer>"}, "no answer letter"),
    ({"image": "../../etc/passwd"}, "points outside the image root"),
    ({"image": "/etc/passwd"}, "points outside the image root"),
    ({"problem": ["not", "a", "string"]}, "non-string field"),
])
def test_bad_split_records_are_named_or_counted(tmp_path, bad, reason):
    f = _split_file(tmp_path, [GOOD, {**GOOD, **bad}, GOOD])
    t0 = time.perf_counter()
    with pytest.raises(BadRecordError, match=rf"{f}, record 1: .*{reason}"):
        load_medr1_file(f, tmp_path)
    skipped = []
    kept = load_medr1_file(f, tmp_path, on_bad_record="skip", skipped=skipped)
    assert len(kept) == 2 and len(skipped) == 1 and skipped[0]["index"] == 1
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("content,reason", [
    (b'[{"image": "a.png", "problem": "\xff\xfe bad bytes"}]', r"not UTF-8 at byte 32 \(line 1\)"),
    (b"[" * 200_000 + b"]" * 200_000, "JSON nested too deeply"),
    (b'[{"image": "images/a.png", "problem": "Q? A)x, B)y", "solu', r"malformed JSON at line 1, column \d+"),
    (b'{"not": "a list"}', "expected a JSON list of records, got dict"),
])
def test_unreadable_json_files_are_named(tmp_path, content, reason):
    f = tmp_path / "CT_test.json"
    f.write_bytes(content)
    with pytest.raises(UserError, match=rf"{f}: {reason}"):
        load_medr1_file(f, tmp_path)


def _omni_root(tmp_path, raw: dict):
    qa = tmp_path / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "a.png").write_bytes(noise_png(0))
    good = {"question_id": "q1", "dataset": "D", "question_type": "Modality Recognition", "question": "Which?",
            "gt_answer": "CT", "option_A": "CT", "option_B": "MRI", "image_path": "Images/a.png",
            "modality_type": "CT"}
    (qa / "D.json").write_text(json.dumps([good, {**good, "question_id": "q2", **raw}]))
    return qa / "D.json"


@pytest.mark.parametrize("raw,reason", [
    ({f"option_{chr(65 + k)}{k}": f"o{k}" for k in range(300)}, "more than 8 options"),  # hundreds of option_* keys
    ({"option_I": "PET"}, r"more than 8 options \(option_I\)"),
    ({"question": "Which?" * 2_000_000}, "question of 12,000,000 characters"),
    ({"image_path": "../outside.png"}, "points outside the image root"),
    ({"gt_answer": "PET"}, "not among the options"),
])
def test_bad_omnimedvqa_records_are_named_or_counted(tmp_path, raw, reason):
    f = _omni_root(tmp_path, raw)
    with pytest.raises(BadRecordError, match=rf"{f}, record 1: .*{reason}"):
        load_omnimedvqa(tmp_path)
    skipped = []
    assert [r.id for r in load_omnimedvqa(tmp_path, on_bad_record="skip", skipped=skipped)] == ["omni-q1"]
    assert len(skipped) == 1


def test_parquet_with_a_wrong_schema_or_bad_rows_is_named(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(pa.table({"id": ["x"], "image": [b""], "image_path": [""], "question": ["q"],
                             "options": ["A,B"], "answer": ["A"], "modality": ["CT"],  # options: a string
                             "question_type": ["modality recognition"], "source": ["s"]}), d / "train.parquet")
    with pytest.raises(UserError, match=rf"{d / 'train.parquet'}: column 'options' is string, expected list"):
        load_prepared(d, "train")
    pq.write_table(pa.table({"id": ["x"]}), d / "train.parquet")
    with pytest.raises(UserError, match=f"cannot read {d / 'train.parquet'}"):
        load_prepared(d, "train")
    (d / "train.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(UserError, match=f"cannot read {d / 'train.parquet'}"):
        load_prepared(d, "train")


def test_parquet_row_that_is_not_a_record_is_named(tmp_path):
    from pipelines.data.schema import VQARecord

    rec = VQARecord("r0", noise_png(0), "Which?", ["CT", "MRI"], "A", "CT", "modality recognition", "s")
    write_prepared(tmp_path / "data", {"train": [rec]}, {})
    t = pq.read_table(tmp_path / "data" / "train.parquet")
    t = t.set_column(t.schema.get_field_index("answer"), "answer", pa.array(["Q"]))
    pq.write_table(t, tmp_path / "data" / "train.parquet")
    with pytest.raises(BadRecordError, match=r"train.parquet, record 0: record 'r0': answer 'Q' is not among"):
        load_prepared(tmp_path / "data", "train")


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]" for k in range(8)])


@pytest.mark.parametrize("text,reason", [
    (BOMB, "expansion exceeds"),  # a billion laughs: 9^9 values from 9 lines
    ("- model\n- data\n", "top level must be a mapping .*not a list"),
    ("just a string\n", "unknown config key 'just a string'"),  # OmegaConf reads a scalar root as a key
    ("model: {path: [unclosed\n", "cannot parse YAML"),
    ("model:\n  path: x\n" + "# padding\n" * 200_000, "bytes; a config is under"),
])
def test_hostile_config_files_are_refused_quickly(tmp_path, text, reason):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"{f}: .*{reason}"):
        load_config(f)
    assert time.perf_counter() - t0 < 5


def test_model_dirs_that_would_unpickle_or_run_code_are_refused(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match=rf"{d / 'pytorch_model.bin'}: the model's weights are pickled"):
        refuse_unsafe_model(d)
    (d / "model.safetensors").write_bytes(b"")  # safetensors beside it: loaded with use_safetensors=True
    refuse_unsafe_model(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": "tok.MyTok"}}))
    with pytest.raises(UserError, match=rf"{d / 'tokenizer_config.json'}: its auto_map asks to run .*AutoTokenizer"):
        refuse_unsafe_model(d)
    refuse_unsafe_model(d, trust_remote_code=True)  # the user said so
    (d / "config.json").write_text("{broken")
    with pytest.raises(UserError, match=rf"{d / 'config.json'}: not readable JSON"):
        refuse_unsafe_model(d, trust_remote_code=True)


def test_a_run_refuses_a_pickled_model_before_starting(tmp_path):
    from pipelines.training.run_setup import ensure_model

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match="weights are pickled"):
        ensure_model(load_config("smoke.yaml", [f"model.path={d}"]))
