"""``medr1 trace report RUN --out DIR``: a static HTML case viewer a clinician can read.

``index.html`` holds each evaluation's numbers (overall, per modality, per question type)
and the chain's verification; every number links to the rows behind it in ``rows.html``
(one anchored section per number, plus wrong-answer sections and a filter bar); every row
links to its case page ``cases/<kind>-<seq>.html`` (image, question, options, reasoning,
answer, provenance). The images the cases show are copied into ``DIR/images``."""
from __future__ import annotations

import re
import shutil
from html import escape
from pathlib import Path

from pipelines.audit.cases import find_store, head_records, load_rows
from pipelines.audit.html_pages import FILTER_JS, case_href, case_page, filter_bar, page, rows_table
from pipelines.errors import UserError
from pipelines.evaluation.accuracy import accuracy_table
from pipelines.tracing.verify import verify_store


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "x"


def evaluations(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Eval rows grouped by the evaluation they came from (step and weight version), in order."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["step"], r["weight_version"]), []).append(r)
    return [(f"step {s}, weights v{v}" if s >= 0 else f"evaluation, weights v{v}", g) for (s, v), g in groups.items()]


def build_report(run: str | Path, out: str | Path, kind: str = "eval") -> dict[str, Path]:
    store = find_store(run)
    rows = load_rows(store, kind)
    if not rows:
        raise UserError(f"{store} has no {kind} rows to report")
    out = Path(out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    verdict = verify_store(store)
    sections, index_parts = [], [_verify_html(verdict, store)]
    first_anchor: dict[int, str] = {}
    for ei, (label, group) in enumerate(evaluations(rows)):
        table = accuracy_table(group)
        links: dict[str, str] = {}

        def section(gid: str, title: str, members: list[dict]) -> str:
            sections.append(f'<section id="{gid}"><h2>{escape(label)}: {escape(title)} ({len(members)} rows)</h2>'
                            f"{rows_table(gid, members)}</section>")
            for r in members:
                first_anchor.setdefault(r["seq"], f"{gid}-r{r['seq']}")
            links[title] = f"rows.html#{gid}"
            return links[title]

        section(f"e{ei}-all", "all", group)
        wrong_href = section(f"e{ei}-wrong", "wrong answers", [r for r in group if not r["correct"]])
        html = [f"<h2>{escape(label)}</h2>", _cell_table("overall", {"all": table["overall"]},
                                                         {"all": links["all"]})]
        for dim, key in (("modality", "by_modality"), ("question type", "by_question_type")):
            hrefs = {name: section(f"e{ei}-{_slug(dim)}-{_slug(name)}", f"{dim} {name}",
                                   [r for r in group if r[key.removeprefix("by_")] == name])
                     for name in table[key]}
            html.append(_cell_table(dim, table[key], hrefs))
        html.append(f'<p>Filters: <a href="{wrong_href}">wrong answers</a> · per modality: '
                    + " · ".join(f'<a href="rows.html#e{ei}-modality-{_slug(m)}">{escape(m)}</a>'
                                 for m in table["by_modality"]) + "</p>")
        index_parts.append("".join(html))
    paths = {"index.html": out / "index.html", "rows.html": out / "rows.html"}
    paths["index.html"].write_text(page(f"Traces of {store.parent.name}", "".join(index_parts)))
    mods = sorted({r["modality"] for r in rows})
    paths["rows.html"].write_text(page("Rows", filter_bar(mods) + "".join(sections), script=FILTER_JS))
    for r in rows:
        image_rel = ""
        if r.get("image_file") and (store / r["image_file"]).is_file():
            dst = out / "images" / Path(r["image_file"]).name
            if not dst.exists():
                shutil.copyfile(store / r["image_file"], dst)
            image_rel = f"../images/{dst.name}"
        (out / case_href(r)).write_text(case_page(r, image_rel, first_anchor[r["seq"]]))
    return paths


def _cell_table(dim: str, cells: dict[str, dict], hrefs: dict[str, str]) -> str:
    head = f"<tr><th>{escape(dim)}</th><th>accuracy</th><th>correct / n</th><th>95% interval</th></tr>"
    body = "".join(
        f'<tr><td>{escape(name)}</td><td class="num"><a href="{hrefs[name]}">{c["accuracy"]:.3f}</a></td>'
        f'<td class="num"><a href="{hrefs[name]}">{c["correct"]} / {c["n"]}</a></td>'
        f'<td class="num">{c["ci95"][0]:.3f} to {c["ci95"][1]:.3f}</td></tr>' for name, c in cells.items())
    return f"<table>{head}{body}</table>"


def _verify_html(verdict, store: Path) -> str:
    recs = head_records(store)
    recorded = "; recorded heads found beside it: " + str(len(recs)) if recs else ""
    if verdict.ok:
        return (f'<p class="ok">Trace chain verified: every row, part and the manifest hold{escape(recorded)}. '
                f'Head <code>{verdict.head}</code> (compare with the one recorded at the end of the run).</p>')
    items = "".join(f"<li>{escape(str(p))}</li>" for p in verdict.problems[:10])
    return f'<p class="bad">The trace store does NOT verify ({len(verdict.problems)} problems):</p><ul>{items}</ul>'
