"""The generalization protocol's bookkeeping in (milli)seconds: report and figures from a
synthetic matrix, fake train/eval cells, rerun skipping finished cells, and the
report's numbers recomputed from the trace files. No Ray, no model."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipelines.data.schema import MODALITIES, QUESTION_TYPES
from pipelines.protocol import KINDS
from pipelines.protocol import matrix as M
from pipelines.protocol import run as P


def write_eval(out: Path, rows: list[dict]) -> dict:
    """What a real evaluation leaves in ``out``: the trace store of its rows and eval.json."""
    from pipelines.evaluation.accuracy import summarize
    from pipelines.traces import TraceWriter

    tw = TraceWriter(out / "traces", kind="eval")
    tw.add(rows)
    tw.close()
    m = summarize(rows, [], 1.0)
    (out / "eval.json").write_text(json.dumps(m))
    return m


def _fake_eval_factory(calls: list, dim: str, domains: list[str], per_domain: int = 10):
    """eval_fn writing real trace rows: a row trained on X answers X's test prompts better."""

    def fake_eval(model, cfg_dict, out: Path, row: str, workers, max_samples):
        calls.append(row)
        rows = []
        for d in domains:
            k = 3 if row == "base" else (8 if d == row else 5 + (len(row) + len(d)) % 3)
            for i in range(per_domain):
                rows.append({"run": row, "kind": "eval", "prompt_id": f"{d}-{i}", "answer": "A",
                             "modality": d if dim == "modality" else "CT",
                             "question_type": d if dim == "question_type" else "disease diagnosis",
                             "source": "fake", "correct": i < k, "predicted": "A" if i < k else "",
                             "format_ok": True, "completion": "<think></think> <answer>A</answer>"})
        return write_eval(out, rows)

    return fake_eval


def _fake_train_factory(calls: list, kind: str):
    def fake_train(cfg_dict):
        dom = (cfg_dict["data"]["modalities"] or cfg_dict["data"]["question_types"])
        assert len(dom) == 1
        assert (cfg_dict["data"]["modalities"] == []) == (kind == "cross-task")
        out = Path(cfg_dict["trainer"]["output_dir"])
        assert out.parent.name == "runs" and out.name == M.slug(dom[0])
        calls.append((dom[0], cfg_dict["trainer"]["total_steps"]))
        return {"final_model": str(out / "checkpoints" / "final" / "hf"), "total_steps": cfg_dict["trainer"]["total_steps"]}

    return fake_train


def _cfg():
    from pipelines.config import load_config

    return load_config(None)


def test_parse_domains():
    from pipelines.errors import UserError

    assert P.parse_domains("cross-modality", None) == list(MODALITIES)
    assert P.parse_domains("cross-task", None) == list(QUESTION_TYPES)
    assert P.parse_domains("cross-modality", "xray, MR,CT,ct") == ["X-ray", "MRI", "CT"]
    assert P.parse_domains("cross-task", "Lesion Grading") == ["lesion grading"]
    with pytest.raises(UserError, match="unknown modality 'PET'"):
        P.parse_domains("cross-modality", "CT,PET")


def test_report_and_figures_from_synthetic_matrix(tmp_path):
    rows = ["base", "sft", "CT", "MRI"]
    cols = ["CT", "MRI", "X-ray"]
    cells = {}
    for ri, r in enumerate(rows):
        cells[r] = {}
        for ci, c in enumerate(cols):
            n, k = 20, 4 + 3 * ri + ci + (6 if r == c else 0)
            cells[r][c] = {"accuracy": k / n, "n": n, "correct": k, "ci95": [0.0, 1.0]}
    m = M.build_matrix("cross-modality", rows, cols, cells)
    assert m["improvement"]["CT"]["CT"] == pytest.approx((4 + 6 + 6) / 20 - 4 / 20)
    assert "base" not in m["improvement"]
    assert m["summary"]["CT"]["in_domain"] == pytest.approx(16 / 20)
    assert m["summary"]["CT"]["out_of_domain_mean"] == pytest.approx((11 / 20 + 12 / 20) / 2)
    assert m["summary"]["base"]["overall"] == pytest.approx((4 + 5 + 6) / 60)
    paths = M.write_outputs(tmp_path, m, {"kind": "cross-modality"})
    for name in ("matrix.json", "matrix.csv", "report.md", "heatmap_accuracy.png", "heatmap_improvement.png",
                 "bars_by_domain.png"):
        assert paths[name].is_file() and paths[name].stat().st_size > 100, name
    report = (tmp_path / "report.md").read_text()
    assert "| train \\ test | CT | MRI | X-ray |" in report
    assert "| CT | 80.0 | 55.0 | 60.0 |" in report  # accuracy row, in %
    assert "| CT | +60.0 | +30.0 | +30.0 |" in report  # improvement over base, in points
    assert "| *n (test)* | 20 | 20 | 20 |" in report
    with (tmp_path / "matrix.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["train_domain", "CT", "MRI", "X-ray", "overall"]
    assert [r[0] for r in table[1:]] == rows
    assert float(table[3][1]) == pytest.approx(0.8)


@pytest.mark.parametrize("kind", ["cross-modality", "cross-task"])
def test_protocol_cells_rerun_and_trace_recompute(tmp_path, kind):
    dim = KINDS[kind]
    all_d = M.all_domains(kind)
    domains = all_d[:3]
    train_calls, eval_calls = [], []
    fake_train = _fake_train_factory(train_calls, kind)
    fake_eval = _fake_eval_factory(eval_calls, dim, all_d)
    sft = tmp_path / "sft-model"
    kw = dict(protocol_dir=tmp_path / "proto", domains=domains, steps=3, sequential=True, train_fn=fake_train,
              eval_fn=fake_eval, sft_model=str(sft))
    m = P.run_protocol(_cfg(), kind, **kw)
    assert [d for d, _ in train_calls] == domains and all(s == 3 for _, s in train_calls)
    assert eval_calls == ["base", "sft"] + domains
    assert m["rows"] == ["base", "sft"] + domains and m["cols"] == all_d
    for r in m["rows"]:
        assert (M.cell_path(tmp_path / "proto", r) / "cell.json").is_file()
    d0 = domains[0]
    assert m["accuracy"][d0][d0] == pytest.approx(0.8) and m["accuracy"]["base"][d0] == pytest.approx(0.3)
    assert m["improvement"][d0][d0] == pytest.approx(0.5)
    for name in ("matrix.json", "matrix.csv", "report.md", "heatmap_accuracy.png", "heatmap_improvement.png",
                 "bars_by_domain.png"):
        assert (tmp_path / "proto" / name).is_file(), name

    # the report's numbers are the traces' numbers
    saved = json.loads((tmp_path / "proto" / "matrix.json").read_text())
    again = M.recompute_from_traces(tmp_path / "proto")
    for key in ("rows", "cols", "accuracy", "n", "correct", "improvement", "summary"):
        assert again[key] == saved[key], key

    # rerun: nothing is recomputed
    train_calls.clear(), eval_calls.clear()
    m2 = P.run_protocol(_cfg(), kind, **kw)
    assert train_calls == [] and eval_calls == []
    assert m2["accuracy"] == m["accuracy"]

    # a lost cell is recomputed alone
    (M.cell_path(tmp_path / "proto", domains[1]) / "cell.json").unlink()
    P.run_protocol(_cfg(), kind, **kw)
    assert [d for d, _ in train_calls] == [domains[1]] and eval_calls == [domains[1]]


def test_failed_cell_leaves_no_cell_json(tmp_path):
    def boom(cfg_dict):
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        P.run_protocol(_cfg(), "cross-task", protocol_dir=tmp_path / "p", domains=["lesion grading"],
                       sequential=True, train_fn=boom,
                       eval_fn=_fake_eval_factory([], "question_type", list(QUESTION_TYPES)))
    assert (M.cell_path(tmp_path / "p", "base") / "cell.json").is_file()
    assert not (M.cell_path(tmp_path / "p", "lesion grading") / "cell.json").exists()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from pipelines.cli.main import main

    rc = main(["protocol", "cross-modality", "smoke", "--domains", "CT,PET", "--out", str(tmp_path)])
    assert rc == 2 and "unknown modality 'PET'" in capsys.readouterr().err
    rc = main(["protocol", "cross-task", "smoke", "--sft-model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2 and "model directory not found" in capsys.readouterr().err



def test_empty_matrix_still_writes_a_report(tmp_path):
    paths = M.write_outputs(tmp_path, M.build_matrix("cross-task", [], [], {}))
    assert "No finished rows" in paths["report.md"].read_text() and paths["matrix.json"].is_file()

@pytest.mark.slow
def test_reduced_protocol_end_to_end(smoke_start, tmp_path):
    """One real GRPO step on CT and one on MRI (from one shared format warm-start), then
    the base and the trained models evaluated on every test modality; the report's numbers
    equal the traces'."""
    from pipelines.config import load_config

    # One rollout actor per cell: each actor's start-up (vLLM's import) is most of a cell on 2 cores.
    cfg = load_config("smoke", [*smoke_start, f"trainer.output_dir={tmp_path / 'run'}", "rollout.num_workers=1",
                                "logging.progress=false", "logging.tensorboard=false", "logging.ray_metrics=false",
                                "eval.max_samples=4"])
    warm = cfg.sft.warmstart_dir
    proto = tmp_path / "proto"
    m = P.run_protocol(cfg, "cross-modality", protocol_dir=proto, domains=["CT", "MRI"], steps=1, max_parallel=1,
                       eval_workers=1, eval_max_samples=16)
    assert m["rows"] == ["base", "CT", "MRI"], "a cell failed: see the log"
    # one warm-start, shared by every row (the base row evaluates it)
    assert json.loads((M.cell_path(proto, "base") / "cell.json").read_text())["model"] == f"{warm}/hf"
    assert len(m["cols"]) == 8 and sum(m["n"]["CT"].values()) == 16
    assert (M.cell_path(proto, "CT") / "checkpoints" / "final" / "hf" / "config.json").is_file()
    cell = json.loads((M.cell_path(proto, "CT") / "cell.json").read_text())
    assert cell["train"]["total_steps"] == 1
    saved = json.loads((proto / "matrix.json").read_text())
    again = M.recompute_from_traces(proto)
    assert again["accuracy"] == saved["accuracy"] and again["n"] == saved["n"]
    for name in ("report.md", "matrix.csv", "heatmap_accuracy.png", "heatmap_improvement.png", "bars_by_domain.png"):
        assert (proto / name).is_file(), name


def test_cell_config_starts_from_the_shared_start_and_keeps_the_other_filter(tmp_path):
    from pipelines.config import load_config, to_dict

    base = to_dict(load_config("smoke", ["sft.warmstart_dir=outputs/smoke/warm",
                                         "data.question_types=[modality recognition]"]))
    a = P.cell_config(base, "cross-modality", "CT", tmp_path / "runs" / "ct", steps=1)
    # the driver already warm-started model.path once for all rows: no second warm-start per cell
    assert a["sft"]["warmstart_dir"] == "" and base["sft"]["warmstart_dir"] == "outputs/smoke/warm"
    assert a["data"]["modalities"] == ["CT"] and a["data"]["question_types"] == ["modality recognition"]
    assert a["trainer"]["output_dir"] == str(tmp_path / "runs" / "ct") and a["trainer"]["total_steps"] == 1
    t = P.cell_config(base, "cross-task", "lesion grading", tmp_path, steps=None)
    assert t["data"]["question_types"] == ["lesion grading"] and t["data"]["modalities"] == []
    assert t["trainer"]["total_steps"] == base["trainer"]["total_steps"]
