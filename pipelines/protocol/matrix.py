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
from pipelines.protocol import KINDS, SFT
from pipelines.protocol.arms import base_row, parse_row
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
    for r in rows:  # each row against the base it started from (a prompt style's own base)
        b = base_row(parse_row(r).style)
        if r != b and b in acc:
            improvement[r] = {c: acc[r][c] - acc[b][c] for c in cols if c in acc[r] and c in acc[b]}
    overall = {}
    for r in rows:
        k, m = sum(correct[r].values()), sum(n[r].values())
        overall[r] = k / m if m else None
    summary = {}
    for r in rows:
        dom = parse_row(r).domain  # "sft:CT [think]" trained on CT
        vals = [v for c, v in acc[r].items()]
        ind = [v for c, v in acc[r].items() if c == dom]
        ood = [v for c, v in acc[r].items() if c != dom]
        summary[r] = {"mean": _mean(vals), "in_domain": _mean(ind) if dom in cols else None,
                      "out_of_domain_mean": _mean(ood) if dom in cols else None, "overall": overall[r]}
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
    imp_rows = [r for r in rows if r in matrix["improvement"]]
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
    lines += [f"Rows: training {label} (`base` = the model every row starts from"
              + (", `sft` = the SFT baseline" if SFT in rows else "")
              + (", `sft:X` = SFT on X's ground-truth letters" if any(r.startswith("sft:") for r in rows) else "")
              + (", `X [style]` = GRPO on X with that prompt style, against `base [style]`"
                 if any(parse_row(r).style for r in rows) else "")
              + f"); columns: test {label}. "
              "Greedy decoding, paper answer parsing (`<answer>\\s*(\\w+)\\s*</answer>`, no match is wrong). "
              "Accuracies in %; n = test prompts per column.", "",
              "## Accuracy (%)", "", markdown_table(rows, cols, matrix["accuracy"], n=n_col), ""]
    if matrix["improvement"]:
        lines += ["## Improvement over base (points)", "",
                  markdown_table(imp_rows, cols, matrix["improvement"], signed=True), ""]
    lines += ["## Summary per row", "", "| train | overall (%) | mean over test domains | in-domain | "
              "out-of-domain mean | vs base (overall, points) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s = matrix["summary"][r]
        b = base_row(parse_row(r).style)
        base_overall = matrix["summary"].get(b, {}).get("overall")
        delta = (s["overall"] - base_overall) if (s["overall"] is not None and base_overall is not None
                                                   and r != b) else None
        lines.append(f"| {r} | {_pct(s['overall'])} | {_pct(s['mean'])} | {_pct(s['in_domain'])} | "
                     f"{_pct(s['out_of_domain_mean'])} | {_pct(delta, signed=True)} |")
    trained = [r for r in rows if matrix["summary"][r]["in_domain"] is not None]
    if trained:
        io = {r: {"in-domain": matrix["summary"][r]["in_domain"],
                  "out-of-domain mean": matrix["summary"][r]["out_of_domain_mean"]} for r in trained}
        for r in trained:  # the same row's base on the same columns: what training changed, in and out
            b = base_row(parse_row(r).style)
            dom = parse_row(r).domain
            if b in matrix["accuracy"]:
                ood = [matrix["accuracy"][b][c] for c in matrix["accuracy"][r] if c != dom and c in matrix["accuracy"][b]]
                io[r]["base, same in-domain"] = matrix["accuracy"][b].get(dom)
                io[r]["base, same out-of-domain"] = _mean(ood)
        keys = ["in-domain", "out-of-domain mean", "base, same in-domain", "base, same out-of-domain"]
        lines += ["", "## In-domain vs out-of-domain (%)", "", markdown_table(trained, keys, io, corner="row"), ""]
        paths["in_vs_out.png"] = plot_grouped_bars(list(keys[:2]), trained, {k: {r: io[r][k] for r in trained}
                                                                            for k in keys[:2]},
                                                   d / "in_vs_out.png", f"{matrix['kind']}: in-domain vs "
                                                                          "out-of-domain accuracy")
    lines += ["", "## Figures", "", "![accuracy](heatmap_accuracy.png)", ""]
    if "heatmap_improvement.png" in paths:
        lines += ["![improvement over base](heatmap_improvement.png)", ""]
    if "in_vs_out.png" in paths:
        lines += ["![in-domain vs out-of-domain](in_vs_out.png)", ""]
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
