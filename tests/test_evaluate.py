"""Evaluation on a real vLLM rollout actor (shared session fixture) and the
`medr1 evaluate` command; the input-error paths run without any engine."""
from __future__ import annotations

import dataclasses
import json

import pytest

MAX_NEW = 24


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    from pipelines.data.store import write_prepared
    from pipelines.data.synthetic import build_synthetic

    splits = build_synthetic(per_cell=1, image_size=56, test_fraction=0.0)
    out = tmp_path_factory.mktemp("prepared-eval")
    write_prepared(out, {"test": splits["train"]})  # 8 modalities x 5 question types, one record each
    return out


def test_cli_rejects_missing_model_and_data(tmp_path, prepared_dir, capsys):
    from pipelines.cli.main import main

    rc = main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(prepared_dir)])
    assert rc == 2 and "model directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(["evaluate", "--model", str(tmp_path / "empty"), "--data", str(prepared_dir)])
    assert rc == 2 and "not an HF model directory" in capsys.readouterr().err


def test_cli_rejects_missing_data(tiny_model_dir, tmp_path, capsys):
    from pipelines.cli.main import main

    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nodata")])
    assert rc == 2 and "prepared dataset directory not found" in capsys.readouterr().err


def test_select_records_spreads_over_domains(prepared_dir):
    from pipelines.data.store import load_prepared
    from pipelines.evaluation.evaluate import select_records

    recs = load_prepared(prepared_dir, "test")
    some = select_records(recs, max_samples=8)
    assert len(some) == 8 and len({r.modality for r in some}) == 8
    assert len({r.question_type for r in some}) == 5, "a few samples must cover both axes"
    assert [r.id for r in some] == [r.id for r in recs if r in some], "original order kept"
    assert len({r.id for r in select_records(recs, max_samples=len(recs) - 1)}) == len(recs) - 1
    only_ct = select_records(recs, modalities=["CT"])
    assert {r.modality for r in only_ct} == {"CT"} and len(only_ct) == 5


@pytest.mark.slow
def test_evaluate_records_matches_traces(rollout_worker, tiny_model_dir, prepared_dir, tmp_path):
    from transformers import AutoTokenizer

    from pipelines.data.store import load_prepared
    from pipelines.evaluation.accuracy import accuracy_table
    from pipelines.evaluation.evaluate import evaluate_records
    from pipelines.traces import TraceWriter, read_traces

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = load_prepared(prepared_dir, "test")
    bad = dataclasses.replace(records[0], id="broken-image", image=b"not an image")
    missing = dataclasses.replace(records[1], id="missing-image", image=b"")
    tw = TraceWriter(tmp_path / "traces", kind="eval")
    # the same actor twice: two shards, both in flight, results gathered in record order
    m = evaluate_records([rollout_worker, rollout_worker], records + [bad, missing], tokenizer=tok,
                         max_new_tokens=MAX_NEW, weight_version=3, step=7, model=str(tiny_model_dir), run="t",
                         trace_writer=tw, progress=False)
    for key in ("overall", "by_modality", "by_question_type", "by_source", "format_rate", "unparsable", "skipped",
                "n", "seconds", "prompts_per_s"):
        assert key in m, key
    assert m["n"] == len(records) == m["overall"]["n"]
    assert m["skipped"]["count"] == 2
    reasons = {s["prompt_id"]: s["reason"] for s in m["skipped"]["records"]}
    assert "cannot be decoded" in reasons["broken-image"] and "missing" in reasons["missing-image"]
    assert sum(c["n"] for c in m["by_modality"].values()) == m["n"]
    assert len(m["by_modality"]) == 8 and len(m["by_question_type"]) == 5
    assert 0 <= m["unparsable"] <= m["n"] and 0.0 <= m["format_rate"] <= 1.0 and m["prompts_per_s"] > 0
    lo, hi = m["overall"]["ci95"]
    assert lo <= m["overall"]["accuracy"] <= hi

    t = read_traces(tmp_path / "traces", kind="eval")
    assert t.num_rows == m["n"]
    rows = t.to_pylist()
    assert {r["kind"] for r in rows} == {"eval"} and {r["step"] for r in rows} == {7}
    assert [r["prompt_id"] for r in rows] == [r.id for r in records]
    assert all(r["image_sha256"] and r["completion_tokens"] <= MAX_NEW for r in rows)
    again = accuracy_table(rows)
    assert again["overall"] == m["overall"]
    assert again["by_modality"] == m["by_modality"] and again["by_question_type"] == m["by_question_type"]
    from rewards import is_correct_eval

    assert all(r["correct"] == is_correct_eval(r["completion"], r["answer"]) for r in rows)
    assert sum(not r["predicted"] for r in rows) == m["unparsable"]

    # greedy: a second pass over a subset gives the same completions
    m2_tw = TraceWriter(tmp_path / "traces2", kind="eval")
    evaluate_records([rollout_worker], records[:5], tokenizer=tok, max_new_tokens=MAX_NEW, trace_writer=m2_tw,
                     progress=False)
    rows2 = read_traces(tmp_path / "traces2").to_pylist()
    assert [r["completion"] for r in rows2] == [r["completion"] for r in rows[:5]]


@pytest.mark.slow
def test_evaluate_cli_writes_outputs(rollout_worker, tiny_model_dir, prepared_dir, tmp_path, capsys):
    from pipelines.cli.evaluate import run
    from pipelines.cli.main import build_parser
    from pipelines.evaluation.accuracy import accuracy_table
    from pipelines.traces import read_traces

    out = tmp_path / "eval-out"
    args = build_parser().parse_args(["evaluate", "--model", str(tiny_model_dir), "--data", str(prepared_dir),
                                      "--out", str(out), "--max-new-tokens", str(MAX_NEW), "--max-samples", "16",
                                      "--show-errors", "3", "--no-progress"])
    for _ in range(2):  # a rerun into the same --out replaces, not appends
        assert run(args, workers=[rollout_worker]) == 0
    doc = json.loads((out / "eval.json").read_text())
    for key in ("model", "data", "split", "weight_version", "overall", "by_modality", "n"):
        assert key in doc
    assert doc["n"] == 16 and doc["split"] == "test" and doc["model"] == str(tiny_model_dir)
    rows = read_traces(out / "traces", kind="eval").to_pylist()
    assert len(rows) == doc["n"]
    assert accuracy_table(rows)["overall"]["accuracy"] == pytest.approx(doc["overall"]["accuracy"])
    assert (out / "accuracy_by_modality.png").stat().st_size > 1000
    assert (out / "accuracy_by_question_type.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "overall" in printed
    if doc["overall"]["correct"] < doc["n"]:
        assert "worst examples" in printed and "reasoning:" in printed


def test_reissues_go_to_actors_that_have_not_failed():
    # Two deaths in one evaluation (chaos run 6): the second actor's prompts must not go back to the
    # first while Ray is still restarting it, where they fail at once and use up every re-issue.
    from pipelines.evaluation.evaluate import _reissue_target

    workers, down = ["w0", "w1", "w2"], set()  # never called on this path: only their places count
    assert _reissue_target(workers, 0, None, down) == 1
    assert _reissue_target(workers, 1, None, down) == 2
    assert down == {0, 1}
    down2 = set()
    assert _reissue_target(workers, 2, None, down2) == 0  # wraps around to the next live one
