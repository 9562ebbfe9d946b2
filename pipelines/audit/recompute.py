"""Recomputing a run's reported numbers from its trace rows alone and comparing them with what
the run wrote: ``eval.json`` (``medr1 evaluate``), ``evals.jsonl`` (each evaluation of a
training run) and the protocol's ``matrix.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipelines.audit.cases import find_stores, load_rows
from pipelines.evaluation.accuracy import summarize
from pipelines.protocol.matrix import recompute_from_traces

_TABLES = ("overall", "by_modality", "by_question_type", "by_source")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _compare(where: str, recorded: dict, again: dict, out: list) -> None:
    """One line per number: (where, recorded, recomputed, equal)."""
    for table in _TABLES:
        if table not in recorded:
            continue
        cells = {"": recorded[table]} if table == "overall" else recorded[table]
        mine = {"": again[table]} if table == "overall" else again[table]
        for name in sorted(set(cells) | set(mine)):
            for key in ("accuracy", "n", "correct"):
                a, b = cells.get(name, {}).get(key), mine.get(name, {}).get(key)
                out.append((f"{where} {table}{'/' + name if name else ''} {key}", a, b, _same(a, b)))
    for key in ("format_rate", "unparsable", "n"):
        if key in recorded:
            out.append((f"{where} {key}", recorded[key], again[key], _same(recorded[key], again[key])))


def recompute_run(run: str | Path) -> list[tuple[str, object, object, bool]]:
    d = Path(run)
    out: list = []
    if (d / "eval.json").is_file():
        recorded = json.loads((d / "eval.json").read_text())
        _compare("eval.json", recorded, summarize(load_rows(find_stores(d)[0], "eval")), out)
    if (d / "evals.jsonl").is_file():
        rows = load_rows(find_stores(d)[0], "eval")
        for line in (d / "evals.jsonl").read_text().splitlines():
            e = json.loads(line)
            mine = [r for r in rows if r["step"] == e["step"] and r["weight_version"] == e["weight_version"]]
            _compare(f"evals.jsonl {e['tag']}", e, summarize(mine), out)
    if (d / "matrix.json").is_file():
        recorded = json.loads((d / "matrix.json").read_text())
        again = recompute_from_traces(d)
        for key in ("accuracy", "n", "correct"):
            for r in sorted(set(recorded.get(key, {})) | set(again.get(key, {}))):
                a, b = recorded.get(key, {}).get(r, {}), again.get(key, {}).get(r, {})
                for c in sorted(set(a) | set(b)):
                    out.append((f"matrix.json {key} {r} / {c}", a.get(c), b.get(c), _same(a.get(c), b.get(c))))
    return out
