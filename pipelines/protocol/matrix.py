"""The generalization matrix of a protocol directory: where each row's files are, the
matrix built from the rows' ``cell.json`` (or recomputed from their traces alone),
and its outputs (matrix.json, matrix.csv, report.md, heatmaps, bars)."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from pipelines.data.schema import MODALITIES, QUESTION_TYPES
from pipelines.evaluation.accuracy import group_accuracy
from pipelines.evaluation.report import markdown_table, plot_grouped_bars, plot_heatmap
from pipelines.protocol import BASE, KINDS, SFT
from pipelines.traces import read_traces


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def all_domains(kind: str) -> list[str]:
    return list(MODALITIES if KINDS[kind] == "modality" else QUESTION_TYPES)


def cell_path(protocol_dir: Path, row: str) -> Path:
    return Path(protocol_dir) / "runs" / slug(row)


def is_finished(protocol_dir: Path, row: str) -> bool:
    return (cell_path(protocol_dir, row) / "cell.json").is_file()


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    tmp.replace(path)  # a crash never leaves a half-written cell.json behind (it would be trusted)


def build_matrix(kind: str, rows: list[str], cols: list[str], cells: dict[str, dict[str, dict]]) -> dict:
    """``cells[row][col]`` = {"accuracy", "n", "correct", "ci95"} -> the matrix document."""
    acc = {r: {c: cells[r][c]["accuracy"] for c in cols if c in cells.get(r, {})} for r in rows}
    n = {r: {c: cells[r][c]["n"] for c in cols if c in cells.get(r, {})} for r in rows}
    correct = {r: {c: cells[r][c]["correct"] for c in cols if c in cells.get(r, {})} for r in rows}
    ci = {r: {c: cells[r][c]["ci95"] for c in cols if c in cells.get(r, {})} for r in rows}
    improvement = {}
    if BASE in acc:
        improvement = {r: {c: acc[r][c] - acc[BASE][c] for c in cols if c in acc[r] and c in acc[BASE]}
                       for r in rows if r != BASE}
    overall = {}
    for r in rows:
        k, m = sum(correct[r].values()), sum(n[r].values())
        overall[r] = k / m if m else None
    summary = {}
    for r in rows:
        vals = [v for c, v in acc[r].items()]
        ind = [v for c, v in acc[r].items() if c == r]
        ood = [v for c, v in acc[r].items() if c != r]
        summary[r] = {"mean": _mean(vals), "in_domain": _mean(ind) if r in cols else None,
                      "out_of_domain_mean": _mean(ood) if r in cols else None, "overall": overall[r]}
    return {"kind": kind, "dimension": KINDS[kind], "rows": rows, "cols": cols, "accuracy": acc, "n": n,
            "correct": correct, "ci95": ci, "improvement": improvement, "summary": summary}


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def write_outputs(protocol_dir: Path, matrix: dict, meta: Optional[dict] = None) -> dict[str, Path]:
    """matrix.json, matrix.csv, report.md and the three figures."""
    d = Path(protocol_dir)
    d.mkdir(parents=True, exist_ok=True)
    rows, cols = matrix["rows"], matrix["cols"]
    _write_json(d / "matrix.json", matrix)
    with (d / "matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["train_domain", *cols, "overall"])
        for r in rows:
            w.writerow([r, *[_csv_num(matrix["accuracy"][r].get(c)) for c in cols],
                        _csv_num(matrix["summary"][r]["overall"])])
    label = "modality" if matrix["dimension"] == "modality" else "question type"
    paths = {"matrix.json": d / "matrix.json", "matrix.csv": d / "matrix.csv"}
    if not rows or not cols:
        (d / "report.md").write_text(f"# Med-R1 generalization protocol: {matrix['kind']}\n\nNo finished rows yet.\n")
        paths["report.md"] = d / "report.md"
        return paths
    paths["heatmap_accuracy.png"] = plot_heatmap(rows, cols, matrix["accuracy"], d / "heatmap_accuracy.png",
                                                 f"{matrix['kind']}: accuracy (%)",
                                                 xlabel=f"test {label}", ylabel=f"train {label}")
    imp_rows = [r for r in rows if r != BASE]
    if matrix["improvement"] and imp_rows:
        paths["heatmap_improvement.png"] = plot_heatmap(
            imp_rows, cols, matrix["improvement"], d / "heatmap_improvement.png",
            f"{matrix['kind']}: improvement over base (points)", diverging=True,
            xlabel=f"test {label}", ylabel=f"train {label}")
    paths["bars_by_domain.png"] = plot_grouped_bars(rows, cols, matrix["accuracy"], d / "bars_by_domain.png",
                                                    f"{matrix['kind']}: accuracy by test {label}")
    n_col = {c: max((matrix["n"][r].get(c, 0) for r in rows), default=0) for c in cols}
    meta = meta or {}
    lines = [f"# Med-R1 generalization protocol: {matrix['kind']}", ""]
    if meta:
        lines += [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
    lines += [f"Rows: training {label} (`base` = the model before GRPO"
              + (", `sft` = the SFT baseline" if SFT in rows else "") + f"); columns: test {label}. "
              "Greedy decoding, paper answer parsing (`<answer>\\s*(\\w+)\\s*</answer>`, no match is wrong). "
              "Accuracies in %; n = test prompts per column.", "",
              "## Accuracy (%)", "", markdown_table(rows, cols, matrix["accuracy"], n=n_col), ""]
    if matrix["improvement"]:
        lines += ["## Improvement over base (points)", "",
                  markdown_table(imp_rows, cols, matrix["improvement"], signed=True), ""]
    lines += ["## Summary per row", "", "| train | overall (%) | mean over test domains | in-domain | "
              "out-of-domain mean | vs base (overall, points) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base_overall = matrix["summary"].get(BASE, {}).get("overall")
    for r in rows:
        s = matrix["summary"][r]
        delta = (s["overall"] - base_overall) if (s["overall"] is not None and base_overall is not None
                                                   and r != BASE) else None
        lines.append(f"| {r} | {_pct(s['overall'])} | {_pct(s['mean'])} | {_pct(s['in_domain'])} | "
                     f"{_pct(s['out_of_domain_mean'])} | {_pct(delta, signed=True)} |")
    lines += ["", "## Figures", "", "![accuracy](heatmap_accuracy.png)", ""]
    if "heatmap_improvement.png" in paths:
        lines += ["![improvement over base](heatmap_improvement.png)", ""]
    lines += ["![accuracy by test domain](bars_by_domain.png)", "",
              "Every number is recomputable from `runs/<row>/eval/traces/eval-*.parquet` "
              "(`pipelines.protocol.matrix.recompute_from_traces`).", ""]
    (d / "report.md").write_text("\n".join(lines))
    paths["report.md"] = d / "report.md"
    return paths


def _pct(v: Optional[float], signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def _csv_num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.6f}"


def matrix_from_cells(protocol_dir: Path) -> dict:
    """The matrix from the rows' ``cell.json`` files and ``protocol.json``."""
    d = Path(protocol_dir)
    meta = json.loads((d / "protocol.json").read_text())
    rows = [r for r in meta["rows"] if is_finished(d, r)]
    cells = {r: json.loads((cell_path(d, r) / "cell.json").read_text())["test"] for r in rows}
    cols = [c for c in meta["cols"] if any(c in cells[r] for r in rows)]
    return build_matrix(meta["kind"], rows, cols, cells)


def recompute_from_traces(protocol_dir: str | Path) -> dict:
    """Recompute every cell from ``runs/<row>/eval/traces/*.parquet`` alone (plus the row
    order in protocol.json); the result must equal ``matrix.json``."""
    d = Path(protocol_dir)
    meta = json.loads((d / "protocol.json").read_text())
    dim = meta["dimension"]
    cells = {}
    for r in meta["rows"]:
        tdir = cell_path(d, r) / "eval" / "traces"
        if not tdir.is_dir():
            continue
        rows = read_traces(tdir, kind="eval").to_pylist()
        if rows:
            cells[r] = group_accuracy(rows, dim)
    rows = [r for r in meta["rows"] if r in cells]
    cols = [c for c in meta["cols"] if any(c in cells[r] for r in rows)]
    return build_matrix(meta["kind"], rows, cols, cells)
