"""`medr1 trace` on an evaluation directory written by the real code: verify's exit codes and
messages, show, export, recompute against eval.json, keygen. No Ray, no model."""
from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from trace_fixtures import reasoning_of, write_eval_dir

from pipelines.cli.main import main


@pytest.fixture
def ev(tmp_path):
    out = tmp_path / "ev"
    write_eval_dir(out)
    return out


def test_verify_ok_then_names_the_edited_row(ev, capsys):
    head = json.loads((ev / "eval.json").read_text())["trace_head"]
    assert main(["trace", "verify", str(ev), "--head", head]) == 0
    assert "OK (eval 9 rows in 1 parts)" in capsys.readouterr().out
    part = ev / "traces" / "eval-00000.parquet"
    t = pq.read_table(part)
    rows = t.to_pylist()
    rows[4]["correct"] = not rows[4]["correct"]  # someone "fixes" a wrong answer
    pq.write_table(t.from_pylist(rows, schema=t.schema), part)
    assert main(["trace", "verify", str(ev)]) == 1
    assert "FAILED, first at eval-00000.parquet row 4: its content does not match its hash" in capsys.readouterr().err
    assert main(["trace", "verify", str(ev), "--head", "ab" * 32]) == 1


def test_show_prints_the_case(ev, capsys):
    assert main(["trace", "show", str(ev), "--prompt-id", "p3", "--kind", "eval"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Which modality is image 3?" in out and "A) CT" in out and "predicted A, truth A: correct" in out
    assert "flat magenta field" in out
    assert main(["trace", "show", str(ev), "--prompt-id", "nope"]) == 2


def test_export_jsonl_and_csv(ev, tmp_path):
    assert main(["trace", "export", str(ev), "--format", "jsonl", "--out", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [f"p{i}" for i in range(9)] and rows[5]["reasoning"] == reasoning_of(5)
    assert main(["trace", "export", str(ev), "--format", "csv", "--out", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 9 and back[2]["completion"] == rows[2]["completion"]


def test_recompute_matches_then_names_the_changed_number(ev, capsys):
    assert main(["trace", "recompute", str(ev)]) == 0
    assert "21 of 21 numbers recomputed from the trace rows match" in capsys.readouterr().out
    doc = json.loads((ev / "eval.json").read_text())
    assert doc["overall"]["correct"] == 3 and doc["by_modality"]["CT"]["correct"] == 3  # hand count: p0, p3, p6
    doc["by_modality"]["MRI"]["accuracy"] = 0.5  # a number edited in the report
    (ev / "eval.json").write_text(json.dumps(doc))
    assert main(["trace", "recompute", str(ev)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS  eval.json by_modality/MRI accuracy: recorded 0.5, from the rows 0.0" in out


def test_keygen_and_signed_verify(tmp_path, capsys):
    key = tmp_path / "k.pem"
    assert main(["trace", "keygen", str(key)]) == 0
    pub = capsys.readouterr().out.split("public key: ")[1].strip()
    assert main(["trace", "keygen", str(key)]) == 2, "never overwrites a key"
    from test_traces import _rows

    from pipelines.traces import TraceWriter

    w = TraceWriter(tmp_path / "run" / "traces", "train", signing_key=str(key))
    w.add(_rows(3))
    w.close()
    assert main(["trace", "verify", str(tmp_path / "run"), "--public-key", pub]) == 0
    assert main(["trace", "verify", str(tmp_path / "run"), "--public-key", "00" * 32]) == 1
