"""The static HTML of ``medr1 trace report``: page frame, the rows table and the case page.
Plain HTML and inline CSS (and a few lines of inline script for the filters): no server,
no network, opens from disk in any browser."""
from __future__ import annotations

import json
from html import escape

from pipelines.audit.cases import options_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #d6dae3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6} a{color:#1750b5} .ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600}
pre{white-space:pre-wrap;background:#f5f6f9;padding:10px;border-radius:4px;font-size:14px}
.case img{max-width:448px;min-width:224px;image-rendering:pixelated;border:1px solid #ccc}
.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#667}
.filters{background:#f5f6f9;padding:8px;border-radius:4px} .truth{font-weight:700}
"""

FILTER_JS = """
function applyFilters(){
  var wrong=document.getElementById('only-wrong').checked, mod=document.getElementById('modality').value;
  document.querySelectorAll('tr[data-correct]').forEach(function(tr){
    var show=(!wrong||tr.dataset.correct==='0')&&(!mod||tr.dataset.modality===mod);
    tr.style.display=show?'':'none';});
}
"""


def page(title: str, body: str, depth: int = 0, script: str = "") -> str:
    up = "../" * depth
    nav = f'<p class="muted"><a href="{up}index.html">index</a> · <a href="{up}rows.html">all rows</a></p>'
    js = f"<script>{script}</script>" if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style>{js}</head><body>{nav}<h1>{escape(title)}</h1>{body}</body></html>\n")


def case_href(r: dict) -> str:
    return f"cases/{r['kind']}-{r['seq']}.html"


def rows_table(gid: str, rows: list[dict]) -> str:
    head = ("<tr><th>prompt</th><th>modality</th><th>question type</th><th>predicted</th><th>truth</th>"
            "<th></th><th>reasoning</th></tr>")
    body = []
    for r in rows:
        mark = '<span class="ok">correct</span>' if r["correct"] else '<span class="bad">wrong</span>'
        reasoning = (r.get("reasoning") or "")[:120]
        body.append(f'<tr id="{gid}-r{r["seq"]}" data-correct="{int(r["correct"])}" '
                    f'data-modality="{escape(r["modality"])}"><td><a href="{case_href(r)}">{escape(r["prompt_id"])}'
                    f'</a></td><td>{escape(r["modality"])}</td><td>{escape(r["question_type"])}</td>'
                    f'<td>{escape(r["predicted"] or "(none)")}</td><td>{escape(r["answer"])}</td><td>{mark}</td>'
                    f'<td>{escape(reasoning)}</td></tr>')
    return f"<table>{head}{''.join(body)}</table>"


def filter_bar(modalities: list[str]) -> str:
    opts = "".join(f'<option value="{escape(m)}">{escape(m)}</option>' for m in modalities)
    return ('<p class="filters"><label><input type="checkbox" id="only-wrong" onchange="applyFilters()"> '
            'wrong answers only</label> &nbsp; <label>modality <select id="modality" onchange="applyFilters()">'
            f'<option value="">all</option>{opts}</select></label></p>')


def case_page(r: dict, image_rel: str, rows_anchor: str) -> str:
    """One case: image, question, options (truth and prediction marked), reasoning, answer, provenance."""
    letters = [o.split(")")[0] for o in options_text(r)]
    opts = []
    for letter, text in zip(letters, options_text(r)):
        tags = (" ← truth" if letter == r["answer"] else "") + (" ← predicted" if letter == r["predicted"] else "")
        cls = ' class="truth"' if letter == r["answer"] else ""
        opts.append(f"<li{cls}>{escape(text)}{escape(tags)}</li>")
    verdict = '<span class="ok">correct</span>' if r["correct"] else '<span class="bad">wrong</span>'
    img = (f'<img id="case-image" src="{escape(image_rel)}" alt="image {escape(r["image_sha256"][:12])}">'
           if image_rel else '<p class="muted">(image not kept in the trace store: over its size cap)</p>')
    prov_keys = ["run", "run_id", "kind", "step", "seq", "dataset", "record_index", "prompt_id", "sample_index",
                 "modality", "question_type", "source", "image_sha256", "image_path", "model", "weight_version",
                 "weights_sha256", "config_sha256", "code_version", "sampling", "seed", "worker", "timestamp",
                 "completion_tokens", "finish_reason", "format_ok", "reward", "reward_components", "advantage",
                 "row_sha256"]
    prov = "".join(f"<tr><th>{k}</th><td>{escape(_fmt(r.get(k)))}</td></tr>" for k in prov_keys)
    body = (f'<div class="case">{img}<h2>Question</h2><p id="question">{escape(r.get("question") or r["prompt"])}'
            f'</p><ul id="options">{"".join(opts)}</ul><h2>Reasoning</h2>'
            f'<pre id="reasoning">{escape(r.get("reasoning") or "(no <think> reasoning)")}</pre>'
            f'<h2>Answer</h2><p id="answer">predicted <b>{escape(r["predicted"] or "(none)")}</b>, truth '
            f'<b>{escape(r["answer"])}</b>: {verdict}</p><h2>Full completion</h2><pre>{escape(r["completion"])}</pre>'
            f'<h2>Provenance</h2><table id="provenance">{prov}</table>'
            f'<p><a href="../rows.html#{rows_anchor}">this row among the others</a></p></div>')
    return page(f"{r['kind']} case {r['prompt_id']} (step {r['step']})", body, depth=1)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    if isinstance(v, str) and v.startswith("{"):
        try:
            return json.dumps(json.loads(v), sort_keys=True)
        except ValueError:
            return v
    return str(v)
