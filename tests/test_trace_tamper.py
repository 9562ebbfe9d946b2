"""Tamper evidence: stores written by the real writer, changed the ways someone could change
them, and ``verify`` must name the file and row where the change is. No Ray, no model."""
from __future__ import annotations

import hashlib
import json
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.schema import VQARecord
from pipelines.traces import TraceWriter, trace_row
from pipelines.tracing.chain import MANIFEST, combined_head, generate_key, read_manifest, write_manifest
from pipelines.tracing.rows import schema
from pipelines.tracing.verify import verify_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
PNG_SHA = hashlib.sha256(PNG).hexdigest()


def rows(n: int, kind: str = "train", tag: str = "case", start: int = 0) -> list[dict]:
    rec = VQARecord("r1", PNG, "Which organ?", ["Brain", "Lung"], "B", "CT", "organ", "src", "imgs/r1.png", index=3)
    return [trace_row(rec, {"text": f"<think>{tag} {start + i:03d} reasons</think><answer>B</answer>",
                            "token_ids": [1, 2]}, kind=kind, run="run", model="m", step=(start + i) // 4,
                      weight_version=0, worker=0, image_sha256=PNG_SHA, correct=True, format_ok=True,
                      reward=1.0, reward_components={"accuracy": 1.0}, advantage=0.5, image_png=PNG)
            for i in range(n)]


def write_store(d, n_train: int = 15, n_eval: int = 4, flush_every: int = 5, tag: str = "case", **kw):
    """15 train rows in 3 parts of 5, 4 eval rows in 1 part; returns the heads."""
    tw = TraceWriter(d, "train", flush_every=flush_every, **kw)
    ew = TraceWriter(d, "eval", flush_every=flush_every, **kw)
    tw.add(rows(n_train, tag=tag))
    ew.add(rows(n_eval, kind="eval", tag=tag))
    tw.close()
    ew.close()
    return tw.heads()


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "run" / "traces"
    heads = write_store(d)
    return d, heads


def first(v):
    assert not v.ok, "verify passed a changed store"
    return v.problems[0]


def rewrite(path, table_rows):
    """Rewrite a part with a valid Parquet footer (what an editor with pyarrow would do)."""
    pq.write_table(pa.Table.from_pylist(table_rows, schema=schema()), path)


def test_untouched_store_verifies_with_its_head(store):
    d, heads = store
    v = verify_store(d, heads=(combined_head(heads), f"train:{heads['train']}"))
    assert v.ok, v.problems
    assert v.chains["train"]["rows"] == 15 and v.chains["train"]["parts"] == 3 and v.chains["eval"]["rows"] == 4
    assert sorted(p.name for p in (d / "images").iterdir()) == [f"{PNG_SHA}.png"], "one image, kept once"


def test_flipped_byte_names_the_row(store):
    d, _ = store
    path = d / "train-00001.parquet"
    data = bytearray(path.read_bytes())
    at = data.index(b"case 007 reasons")  # row 2 of the second part (rows 5..9)
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    p = first(verify_store(d))
    assert (p.file, p.row) == ("train-00001.parquet", 2) and "does not match its hash" in p.what


def test_any_flipped_byte_is_detected(store):
    """Detection rate over 60 random single-byte flips across a part: every one must fail verify
    naming the file (a flip in Parquet metadata cannot name a row; one in the data does)."""
    d, _ = store
    path = d / "train-00002.parquet"
    orig = path.read_bytes()
    rnd = random.Random(0)
    detected = named_row = 0
    offsets = rnd.sample(range(len(orig)), 60)
    for off in offsets:
        data = bytearray(orig)
        data[off] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(data))
        v = verify_store(d)
        detected += (not v.ok) and v.problems[0].file == "train-00002.parquet"
        named_row += (not v.ok) and v.problems[0].row is not None
    path.write_bytes(orig)
    assert verify_store(d).ok
    print(f"flipped bytes detected: {detected}/{len(offsets)}, a row named for {named_row}")
    assert detected == len(offsets)


def test_edited_completion_names_the_row(store):
    d, _ = store
    path = d / "train-00000.parquet"
    t = pq.read_table(path).to_pylist()
    t[3]["completion"] = t[3]["completion"].replace("<answer>B</answer>", "<answer>A</answer>")
    rewrite(path, t)
    p = first(verify_store(d))
    assert (p.file, p.row) == ("train-00000.parquet", 3) and "does not match its hash" in p.what


def test_deleted_row_names_where_it_was(store):
    d, _ = store
    path = d / "train-00001.parquet"
    t = pq.read_table(path).to_pylist()
    rewrite(path, t[:2] + t[3:])
    p = first(verify_store(d))
    assert (p.file, p.row) == ("train-00001.parquet", 2) and "was removed, added or moved" in p.what


def test_swapped_rows_name_the_first(store):
    d, _ = store
    path = d / "train-00002.parquet"
    t = pq.read_table(path).to_pylist()
    t[1], t[2] = t[2], t[1]
    rewrite(path, t)
    p = first(verify_store(d))
    assert (p.file, p.row) == ("train-00002.parquet", 1)


def test_removed_part_is_named(store):
    d, _ = store
    (d / "train-00001.parquet").unlink()
    p = first(verify_store(d))
    assert p.file == "train-00001.parquet" and "missing: rows 5..9" in p.what


def test_part_from_another_run_is_named(store, tmp_path):
    d, _ = store
    other = tmp_path / "other" / "traces"
    write_store(other, tag="other")
    shutil.copy(other / "train-00000.parquet", d / "train-00003.parquet")
    p = first(verify_store(d))
    assert (p.file, p.row) == ("train-00003.parquet", 0) and "not listed" in p.what
    assert read_manifest(other)["run_id"] in p.what, "the message says whose rows they are"


def test_edited_manifest_is_named(store):
    d, _ = store
    m = json.loads((d / MANIFEST).read_text())
    m["chains"]["train"]["parts"][0]["rows"] = 4
    (d / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True))
    p = first(verify_store(d))
    assert p.file == MANIFEST and "edited" in p.what


def test_truncated_chain_is_caught_by_the_recorded_head(store):
    """Cut the last rows and rewrite the manifest to match: the store is consistent again, and
    only the head recorded elsewhere tells (verify names where the chain now ends)."""
    d, heads = store
    path = d / "train-00002.parquet"
    kept = pq.read_table(path).to_pylist()[:3]
    rewrite(path, kept)
    m = read_manifest(d)
    part, chain = m["chains"]["train"]["parts"][-1], m["chains"]["train"]
    part.update(rows=3, head=kept[-1]["row_sha256"], sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                bytes=path.stat().st_size)
    chain.update(rows=13, head=kept[-1]["row_sha256"])
    write_manifest(d, m)
    assert verify_store(d).ok, "without a recorded head the truncation is consistent (so the head is needed)"
    for head in (f"train:{heads['train']}", combined_head(heads)):
        # head_records: the per-kind heads summary.json keeps, trusted as they hash to the recorded head
        p = first(verify_store(d, heads=(head,), head_records=({"eval": "0" * 64}, heads)))
        assert (p.file, p.row) == ("train-00002.parquet", 2) and "not in the chain" in p.what
    p = first(verify_store(d, heads=(combined_head(heads),)))  # the combined head alone: it still fails
    assert "not in the chain" in p.what and "train at train-00002.parquet row 2" in p.what


def test_rows_added_after_the_recorded_head_are_named(store):
    d, heads = store
    tw = TraceWriter(d, "train", flush_every=5)
    tw.add(rows(2, start=15))
    tw.close()
    assert verify_store(d).ok
    p = first(verify_store(d, heads=(f"train:{heads['train']}",)))
    assert (p.file, p.row) == ("train-00002.parquet", 4) and "rows were added after it" in p.what


def test_signed_manifest(tmp_path):
    key = tmp_path / "key.pem"
    pub = generate_key(key)
    d = tmp_path / "run" / "traces"
    write_store(d, signing_key=str(key))
    assert verify_store(d, public_key=pub).ok
    # someone without the key edits the manifest and fixes up its self-hash: the signature tells
    m = read_manifest(d)
    m["chains"]["train"]["parts"][0]["rows"] = 4
    write_manifest(d, m)
    assert "signature" in first(verify_store(d)).what or "signed" in first(verify_store(d)).what
    # another key's signature is refused when the lab's public key is given
    other = tmp_path / "other.pem"
    generate_key(other)
    d2 = tmp_path / "run2" / "traces"
    write_store(d2, signing_key=str(other))
    assert verify_store(d2).ok
    assert "not by the expected key" in first(verify_store(d2, public_key=pub)).what
    (d2 / "MANIFEST.json.sig").unlink()
    assert "missing" in first(verify_store(d2)).what, "a stripped signature shows (the manifest names its signer)"


def test_changed_image_is_named(store):
    d, _ = store
    (d / "images" / f"{PNG_SHA}.png").write_bytes(PNG + b"!")
    p = first(verify_store(d))
    assert p.file == f"images/{PNG_SHA}.png" and "eval-00000.parquet row 0" in p.what  # chains walk in kind order
