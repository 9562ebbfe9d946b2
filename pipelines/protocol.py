"""`medr1 protocol cross-modality|cross-task CONFIG`: the paper's generalization experiment.

For each training domain (the 8 modalities or the 5 question types, or a
``--domains`` subset) one GRPO run on that domain's train split, then the final
model is evaluated on the whole test split and sliced by domain: one row of the
cross-domain matrix. The base model (and an SFT model with ``--sft-model``) are
baseline rows.

Layout under the protocol directory::

    protocol.json                 what was asked (kind, dimension, rows, columns, config)
    runs/<row>/                   one training run (trainer.output_dir) per training domain
    runs/<row>/eval/              eval.json + traces/eval-*.parquet of the cross-domain eval
    runs/<row>/cell.json          the finished row; present = not recomputed on rerun
    matrix.json, matrix.csv       accuracy (rows = train domain incl. base, cols = test domain)
    report.md                     accuracy and improvement-over-base tables, with n
    heatmap_accuracy.png, heatmap_improvement.png, bars_by_domain.png

Every training run is an independent Ray task (num_cpus=0: its actors reserve
the real resources), so a cluster runs several at once (``--max-parallel``);
``--sequential`` runs them in the driver process one after another.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

KINDS = {"cross-modality": "modality", "cross-task": "question_type"}
BASE, SFT = "base", "sft"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protocol", help="the paper's cross-modality / cross-task generalization matrix "
                                        "(one GRPO run per domain, each evaluated on every test domain)")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("config", help="YAML config for each training run (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--domains", default=None, help="comma-separated training domains (default: all 8 modalities "
                                                   "or all 5 question types)")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: trainer.total_steps)")
    p.add_argument("--out", default=None, help="protocol directory (default: <trainer.output_dir>-<kind>)")
    p.add_argument("--sft-model", default=None, help="an SFT model directory, evaluated as a baseline row")
    p.add_argument("--sequential", action="store_true", help="run the cells one after another in this process")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="training runs in flight at once (default: 1 on a local Ray, all on a cluster)")
    p.add_argument("--eval-workers", type=int, default=None, help="rollout actors per evaluation "
                                                                  "(default: rollout.num_workers)")
    p.add_argument("--eval-max-samples", type=int, default=None,
                   help="evaluate on N test records spread over the split (default: all)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- helpers
def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def all_domains(kind: str) -> list[str]:
    from pipelines.data.schema import MODALITIES, QUESTION_TYPES

    return list(MODALITIES if KINDS[kind] == "modality" else QUESTION_TYPES)


def parse_domains(kind: str, spec: Optional[str]) -> list[str]:
    """Canonical domain names from a comma-separated list (aliases accepted: 'xray', 'mr', ...)."""
    from pipelines.data.schema import try_normalize_modality, try_normalize_question_type
    from pipelines.errors import UserError

    known = all_domains(kind)
    if not spec:
        return known
    norm = try_normalize_modality if KINDS[kind] == "modality" else try_normalize_question_type
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        d = norm(item)
        if d is None:
            raise UserError(f"--domains: unknown {KINDS[kind].replace('_', ' ')} {item!r}; known: {', '.join(known)}")
        if d not in out:
            out.append(d)
    if not out:
        raise UserError("--domains is empty")
    return out


def cfg_to_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def cfg_from_dict(d: dict):
    from omegaconf import OmegaConf

    from pipelines.config import MedR1Config, validate

    cfg = OmegaConf.merge(OmegaConf.structured(MedR1Config), d)
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return cfg


def cell_config(base: dict, kind: str, domain: str, run_dir: Path, steps: Optional[int]) -> dict:
    """The training config of one cell: the base config restricted to ``domain``."""
    import copy

    d = copy.deepcopy(base)
    d["data"]["modalities"] = [domain] if KINDS[kind] == "modality" else []
    d["data"]["question_types"] = [domain] if KINDS[kind] == "question_type" else []
    d["trainer"]["output_dir"] = str(run_dir)
    d["trainer"]["resume_from"] = None
    if steps is not None:
        d["trainer"]["total_steps"] = int(steps)
    return d


def eval_config(base: dict):
    """The evaluation config: the whole test split (no domain filter)."""
    import copy

    d = copy.deepcopy(base)
    d["data"]["modalities"], d["data"]["question_types"] = [], []
    return cfg_from_dict(d)


def cell_path(protocol_dir: Path, row: str) -> Path:
    return Path(protocol_dir) / "runs" / slug(row)


def is_finished(protocol_dir: Path, row: str) -> bool:
    return (cell_path(protocol_dir, row) / "cell.json").is_file()


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    tmp.replace(path)  # a crash never leaves a half-written cell.json behind (it would be trusted)


# --------------------------------------------------------------------------- default train / eval
def default_train(cfg_dict: dict) -> dict:
    """Run GRPO with ``cfg_dict``; the summary (``final_model`` = the HF dir of the final weights)."""
    from pipelines.train import run_training

    cfg = cfg_from_dict(cfg_dict)
    summary = dict(run_training(cfg))
    summary.setdefault("final_model", str(Path(cfg.trainer.output_dir) / "checkpoints" / "final" / "hf"))
    return summary


def default_eval(model: str, cfg_dict: dict, out: Path, row: str, num_workers: Optional[int],
                 max_samples: Optional[int]) -> dict:
    """Evaluate ``model`` on the whole test split into ``out``; eval.json's content."""
    from pipelines.evaluate import evaluate_model

    cfg = eval_config(cfg_dict)
    return evaluate_model(model, cfg.data.prepared_dir, split=cfg.data.test_split, out=out, cfg=cfg,
                          num_workers=num_workers, max_samples=max_samples, run_name=row, print_table=False,
                          progress=cfg.logging.progress)


def run_cell(row: str, kind: str, domain: Optional[str], cfg_dict: dict, protocol_dir: str, *,
             steps: Optional[int] = None, model: Optional[str] = None, eval_workers: Optional[int] = None,
             eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
             eval_fn: Optional[Callable] = None) -> dict:
    """One row of the matrix: train on ``domain`` (unless ``model`` is given: a baseline),
    evaluate on the whole test split, write ``cell.json``; returns it."""
    train_fn = train_fn or default_train
    eval_fn = eval_fn or default_eval
    run_dir = cell_path(Path(protocol_dir), row)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {}
    if model is None:
        summary = train_fn(cell_config(cfg_dict, kind, domain, run_dir, steps))
        model = summary.get("final_model") or str(run_dir / "checkpoints" / "final" / "hf")
    ev = eval_fn(model, cfg_dict, run_dir / "eval", row, eval_workers, eval_max_samples)
    dim = KINDS[kind]
    cell = {
        "row": row, "kind": kind, "train_domain": domain, "model": str(model),
        "test": ev["by_modality" if dim == "modality" else "by_question_type"],
        "overall": ev["overall"], "n": ev["n"], "skipped": ev.get("skipped", {}).get("count", 0),
        "format_rate": ev.get("format_rate"), "unparsable": ev.get("unparsable"),
        "train": {k: summary[k] for k in ("total_steps", "minutes", "weight_version", "before", "after",
                                          "final_model") if k in summary},
        "seconds": time.perf_counter() - t0,
    }
    _write_json(run_dir / "cell.json", cell)
    return cell


# --------------------------------------------------------------------------- matrix + report
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
    from pipelines.report import markdown_table, plot_grouped_bars, plot_heatmap

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
              "(`pipelines.protocol.recompute_from_traces`).", ""]
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
    from pipelines.evaluation import group_accuracy
    from pipelines.traces import read_traces

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


# --------------------------------------------------------------------------- driver
def run_protocol(cfg, kind: str, *, protocol_dir: str | Path, domains: Optional[list[str]] = None,
                 steps: Optional[int] = None, sft_model: Optional[str] = None, sequential: bool = False,
                 max_parallel: Optional[int] = None, eval_workers: Optional[int] = None,
                 eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
                 eval_fn: Optional[Callable] = None, test_domains: Optional[list[str]] = None) -> dict:
    """Run every unfinished row, then write the matrix and the report; returns the matrix.

    ``train_fn(cfg_dict) -> summary`` and ``eval_fn(model, cfg_dict, out, row, workers,
    max_samples) -> eval.json dict`` default to GRPO training and ``evaluate_model``;
    tests pass fakes (with ``sequential=True``)."""
    d = Path(protocol_dir)
    d.mkdir(parents=True, exist_ok=True)
    domains = list(domains or all_domains(kind))
    base_dict = cfg_to_dict(cfg)
    base_model = str(cfg.model.path)
    if train_fn is None or eval_fn is None:
        # The real thing: make sure the base model and the dataset exist before any cell starts.
        from pipelines.run_setup import ensure_data, ensure_model

        base_model = ensure_model(cfg)
        base_dict["model"]["path"] = base_model
        ensure_data(eval_config(base_dict))
    if test_domains is None:
        test_domains = _present_test_domains(base_dict, kind) if eval_fn is None else all_domains(kind)
    rows = [BASE] + ([SFT] if sft_model else []) + domains
    meta = {"kind": kind, "dimension": KINDS[kind], "rows": rows, "cols": test_domains, "steps": steps,
            "base_model": base_model, "sft_model": sft_model, "config": base_dict}
    _write_json(d / "protocol.json", meta)

    jobs = []  # (row, domain, model)
    for r in rows:
        if is_finished(d, r):
            log.info("protocol: %s already finished (%s); not recomputed", r, cell_path(d, r) / "cell.json")
            continue
        jobs.append((r, None if r in (BASE, SFT) else r, base_model if r == BASE else sft_model if r == SFT else None))
    common = dict(steps=steps, eval_workers=eval_workers, eval_max_samples=eval_max_samples, train_fn=train_fn,
                  eval_fn=eval_fn)
    if sequential:
        for r, dom, model in jobs:
            log.info("protocol: running %s", r)
            run_cell(r, kind, dom, base_dict, str(d), model=model, **common)
    elif jobs:
        _run_on_ray(cfg, jobs, kind, base_dict, d, max_parallel, common)
    matrix = matrix_from_cells(d)
    write_outputs(d, matrix, {"kind": kind, "base model": base_model, "steps per run": steps,
                              "training domains": ", ".join(domains), "protocol dir": str(d)})
    return matrix


def _present_test_domains(base_dict: dict, kind: str) -> list[str]:
    from pipelines.data.store import load_prepared

    cfg = eval_config(base_dict)
    recs = load_prepared(cfg.data.prepared_dir, cfg.data.test_split)
    key = KINDS[kind]
    present = {getattr(r, key) for r in recs}
    return [x for x in all_domains(kind) if x in present]


def _run_on_ray(cfg, jobs, kind, base_dict, d: Path, max_parallel, common) -> None:
    import os

    import ray

    from pipelines.config import REPO_ROOT

    local = cfg.cluster.address is None and not os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        from cluster.connect import connect
        from pipelines.run_setup import resource_plan

        ncpu = cfg.cluster.num_cpus
        if local and ncpu is None:
            ncpu = max(os.cpu_count() or 1, int(-(-resource_plan(cfg).totals().get("CPU", 1) // 1)))
        connect(cfg.cluster.address, num_cpus=ncpu, dashboard_host=cfg.cluster.dashboard_host,
                env_vars=dict(cfg.cluster.runtime_env_vars), working_dir_on_path=str(REPO_ROOT))
        started = True
    limit = max_parallel or (1 if local else len(jobs))
    # num_cpus=0: the task only coordinates; its rollout / learner actors reserve the real resources.
    task = ray.remote(num_cpus=0, max_retries=0)(run_cell)
    pending: dict = {}
    queue = list(jobs)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                r, dom, model = queue.pop(0)
                log.info("protocol: submitting %s", r)
                ref = task.options(name=f"protocol-{slug(r)}").remote(r, kind, dom, base_dict, str(d), model=model,
                                                                      **common)
                pending[ref] = r
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                r = pending.pop(ref)
                try:
                    ray.get(ref)
                    log.info("protocol: %s finished", r)
                except Exception as e:  # one failed cell does not lose the others; rerun retries it
                    log.error("protocol: %s failed: %s", r, e)
    finally:
        if started:
            ray.shutdown()


def run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.errors import UserError

    cfg = load_config(args.config, args.overrides)
    domains = parse_domains(args.kind, args.domains)
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be >= 1")
    if args.sft_model:
        from pipelines.evaluate import check_model_dir

        check_model_dir(args.sft_model)
    out = args.out or f"{str(cfg.trainer.output_dir).rstrip('/')}-{args.kind}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    matrix = run_protocol(cfg, args.kind, protocol_dir=out, domains=domains, steps=args.steps,
                          sft_model=args.sft_model, sequential=args.sequential, max_parallel=args.max_parallel,
                          eval_workers=args.eval_workers, eval_max_samples=args.eval_max_samples)
    missing = [r for r in [BASE] + domains if r not in matrix["rows"]]
    print((Path(out) / "report.md").read_text())
    print(f"outputs in {out}: matrix.json, matrix.csv, report.md, heatmap_accuracy.png, "
          f"heatmap_improvement.png, bars_by_domain.png, runs/")
    if missing:
        print(f"unfinished rows (rerun the same command to retry them): {', '.join(missing)}")
        return 1
    return 0
