"""Finding a run's trace store(s) and reading cases from them: what ``medr1 trace`` works on.

RUN may be a training run's output_dir, an evaluation's ``--out``, a protocol directory
(its cells' stores below it) or a ``traces/`` directory itself."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from pipelines.errors import UserError
from pipelines.tracing.chain import MANIFEST
from pipelines.tracing.rows import TRACE_COLUMNS, part_files, read_traces


def _is_store(d: Path) -> bool:
    return (d / MANIFEST).is_file() or bool(part_files(d))


def find_stores(run: str | Path) -> list[Path]:
    """Every trace store under RUN (one for a run or an evaluation; one per cell of a protocol)."""
    d = Path(run)
    if not d.is_dir():
        raise UserError(f"{d}: no such directory")
    for cand in (d / "traces", d):
        if _is_store(cand):
            return [cand]
    found = sorted({p.parent for p in d.rglob(MANIFEST) if p.parent.name == "traces"})
    if not found:
        raise UserError(f"{d} holds no trace store (no traces/{MANIFEST} below it)")
    return found


def find_store(run: str | Path) -> Path:
    stores = find_stores(run)
    if len(stores) > 1:
        raise UserError(f"{run} holds {len(stores)} trace stores; name one: "
                        + ", ".join(str(s.parent) for s in stores[:5]))
    return stores[0]


def head_records(store: Path) -> list[dict]:
    """Per-kind heads recorded beside the store (summary.json, eval.json, checkpoints). ``verify``
    trusts them only when they hash to a head the user gives."""
    run = store.parent
    recs = []
    for p in [run / "summary.json", run / "eval.json"]:
        if p.is_file():
            doc = json.loads(p.read_text())
            recs.append(doc.get("trace_heads") or ({"eval": doc["trace_head"]} if doc.get("trace_head") else {}))
    for p in sorted((run / "checkpoints").glob("*/trace/HEADS.json")):
        recs.append(json.loads(p.read_text()).get("heads", {}))
    return [r for r in recs if r]


def load_rows(store: Path, kind: Optional[str] = None) -> list[dict]:
    return read_traces(store, kind).to_pylist()


def case_rows(rows: list[dict], prompt_id: str, step: Optional[int] = None, kind: Optional[str] = None) -> list[dict]:
    return [r for r in rows if r["prompt_id"] == prompt_id and (step is None or r["step"] == step)
            and (kind is None or r["kind"] == kind)]


def options_text(row: dict) -> list[str]:
    try:
        opts = json.loads(row.get("options") or "[]")
    except ValueError:
        opts = []
    return [f"{chr(65 + i)}) {o}" for i, o in enumerate(opts)]


def show_case(store: Path, rows: list[dict], console: Optional[Console] = None) -> None:
    """The rows of one case in the terminal: image, question, options, reasoning, answer, rewards, weights."""
    console = console or Console()
    for r in rows:
        verdict = "[green]correct[/green]" if r["correct"] else "[red]wrong[/red]"
        img = store / r["image_file"] if r.get("image_file") else None
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("image", escape(f"{img if img else '(not kept)'}  (original {r.get('image_path') or '-'}, "
                                  f"sha256 {r['image_sha256'][:16]})"))
        t.add_row("question", escape(r.get("question") or r["prompt"]))
        t.add_row("options", escape("\n".join(options_text(r)) or "-"))
        t.add_row("reasoning", escape(r.get("reasoning") or "(none)"))
        t.add_row("answer", f"predicted {escape(r['predicted'] or '(none)')}, truth {escape(r['answer'])}: {verdict}")
        if r["kind"] == "train":
            t.add_row("reward", escape(f"{r['reward']:.3f} {r['reward_components']}  advantage {r['advantage']:.3f}"))
        t.add_row("weights", escape(f"version {r['weight_version']}  sha256 {(r.get('weights_sha256') or '-')[:16]}"))
        t.add_row("completion", escape(r["completion"]))
        t.add_row("provenance", escape(f"run {r['run']} ({r['run_id'][:12]}), {r['dataset']} record "
                                       f"{r['record_index']}, worker {r['worker']}, seed {r['seed']}, "
                                       f"{r['code_version']}, {r['timestamp']}"))
        console.print(Panel(t, title=escape(f"{r['kind']} {r['prompt_id']}  step {r['step']}  sample "
                                            f"{r['sample_index']}  (row {r['seq']})"), expand=False))


def export_rows(rows: list[dict], fmt: str, out: Optional[str]) -> int:
    """All columns, one record per row, as JSON lines or CSV; returns the row count."""
    f = open(out, "w", newline="") if out else sys.stdout
    try:
        if fmt == "jsonl":
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        else:
            w = csv.DictWriter(f, fieldnames=list(TRACE_COLUMNS))
            w.writeheader()
            w.writerows(rows)
    finally:
        if out:
            f.close()
    return len(rows)
