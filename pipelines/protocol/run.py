"""The paper's generalization experiment (``medr1 protocol cross-modality|cross-task``).

For each training domain (the 8 modalities or the 5 question types, or a
``--domains`` subset) one GRPO run on that domain's train split, then the final
model is evaluated on the test split (``--test-domains``, default every domain) and
sliced by domain: one row of the cross-domain matrix. The base model is a baseline
row; ``--sft-model`` adds an SFT model trained elsewhere, ``--sft-arm`` an SFT run
(ground-truth letters) per training domain, and ``--prompt-styles`` GRPO rows in other
prompt styles (``arms.py`` names the rows).

When the config has a format warm-start (``sft.warmstart_dir``), it is built once per
prompt style on the whole training split and every row of that style starts from it,
the base row included, so "improvement over base" is what GRPO or SFT on one domain did.

Layout under the protocol directory::

    protocol.json                 what was asked (kind, dimension, rows, columns, config)
    runs/<row>/                   one training run (trainer.output_dir) per row that trains
    runs/<row>/eval/              eval.json + traces/eval-*.parquet of the cross-domain eval
    runs/<row>/cell.json          the finished row; present = not recomputed on rerun
    matrix.json, matrix.csv       accuracy (rows = train domain incl. base, cols = test domain)
    report.md                     accuracy and improvement-over-base tables, with n
    heatmap_accuracy.png, heatmap_improvement.png, bars_by_domain.png, in_vs_out.png

Every training run is an independent Ray task (num_cpus=0: its actors reserve
the real resources), so a cluster runs several at once (``--max-parallel``);
``--sequential`` runs them in the driver process one after another.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import ray

from cluster.connect import is_local
from cluster.ray_utils import describe_failure
from pipelines.config import from_dict, to_dict
from pipelines.data.schema import try_normalize_modality, try_normalize_question_type
from pipelines.data.store import load_prepared
from pipelines.errors import UserError
from pipelines.evaluation.evaluate import evaluate_model
from pipelines.launch import connect_ray, resource_plan
from pipelines.models.tiny import is_model_dir
from pipelines.protocol import KINDS
from pipelines.protocol.arms import (
    BASELINE,
    GRPO,
    SFT_ARM,
    domain_filter,
    parse_row,
    plan_rows,
    styled_config,
)
from pipelines.protocol.matrix import (
    _write_json,
    all_domains,
    cell_path,
    is_finished,
    matrix_from_cells,
    slug,
    write_outputs,
)
from pipelines.training.grpo_loop import run_training
from pipelines.training.run_setup import ensure_data, ensure_model, ensure_warmstart
from pipelines.training.sft import run_sft

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers
def parse_domains(kind: str, spec: Optional[str], flag: str = "--domains") -> list[str]:
    """Canonical domain names from a comma-separated list (aliases accepted: 'xray', 'mr', ...)."""
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
            raise UserError(f"{flag}: unknown {KINDS[kind].replace('_', ' ')} {item!r}; known: {', '.join(known)}")
        if d not in out:
            out.append(d)
    if not out:
        raise UserError(f"{flag} is empty")
    return out


def cell_config(base: dict, kind: str, domain: str, run_dir: Path, steps: Optional[int]) -> dict:
    """The training config of one cell: ``base`` (whose model.path is the row's starting model,
    warm-started already) restricted to ``domain``."""
    d = domain_filter(base, kind, [domain])
    d["trainer"]["output_dir"] = str(run_dir)
    d["trainer"]["resume_from"] = None
    # The driver built the warm-start once for every row of this style (model.path points at it);
    # a warm-start per cell would give each row another starting point than the base row's.
    d["sft"]["warmstart_dir"] = ""
    if steps is not None:
        d["trainer"]["total_steps"] = int(steps)
    return d


def eval_config(base: dict):
    """The evaluation config: the whole test split (no domain filter)."""
    d = copy.deepcopy(base)
    d["data"]["modalities"], d["data"]["question_types"] = [], []
    return from_dict(d)


# --------------------------------------------------------------------------- default train / eval
def default_train(cfg_dict: dict) -> dict:
    """Run GRPO with ``cfg_dict``; the summary (``final_model`` = the HF dir of the final weights)."""
    cfg = from_dict(cfg_dict)
    summary = dict(run_training(cfg))
    summary.setdefault("final_model", str(Path(cfg.trainer.output_dir) / "checkpoints" / "final" / "hf"))
    return summary


def default_sft(cfg_dict: dict) -> dict:
    """SFT on the ground-truth letters of the cell's training records (the paper's SFT baseline),
    from the same starting model as the GRPO rows, for ``sft.epochs`` at ``sft.lr``."""
    cfg = from_dict(cfg_dict)
    train, _ = ensure_data(cfg)
    t0 = time.perf_counter()
    model = run_sft(cfg, str(cfg.model.path), train, str(Path(cfg.trainer.output_dir) / "sft"), target="answer",
                    epochs=cfg.sft.epochs, lr=cfg.sft.lr)
    return {"final_model": model, "minutes": (time.perf_counter() - t0) / 60, "records": len(train)}


def default_eval(model: str, cfg_dict: dict, out: Path, row: str, num_workers: Optional[int],
                 max_samples: Optional[int]) -> dict:
    """Evaluate ``model`` on the test split's records of ``cfg_dict``'s domains into ``out``."""
    cfg = from_dict(cfg_dict)
    return evaluate_model(model, cfg.data.prepared_dir, split=cfg.data.test_split, out=out, cfg=cfg,
                          num_workers=num_workers, max_samples=max_samples, run_name=row, print_table=False,
                          modalities=list(cfg.data.modalities) or None,
                          question_types=list(cfg.data.question_types) or None, progress=cfg.logging.progress)


def run_cell(row: str, kind: str, domain: Optional[str], cfg_dict: dict, protocol_dir: str, *,
             arm: str = GRPO, eval_dict: Optional[dict] = None, steps: Optional[int] = None,
             model: Optional[str] = None, eval_workers: Optional[int] = None,
             eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
             sft_fn: Optional[Callable] = None, eval_fn: Optional[Callable] = None) -> dict:
    """One row of the matrix: train on ``domain`` with GRPO or SFT (unless ``model`` is given:
    a baseline), evaluate on the test domains (``eval_dict``), write ``cell.json``; returns it."""
    fit = (sft_fn or default_sft) if arm == SFT_ARM else (train_fn or default_train)
    eval_fn = eval_fn or default_eval
    run_dir = cell_path(Path(protocol_dir), row)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {}
    if model is None:
        summary = fit(cell_config(cfg_dict, kind, domain, run_dir, steps))
        model = summary.get("final_model") or str(run_dir / "checkpoints" / "final" / "hf")
    t_eval = time.perf_counter()
    ev = eval_fn(model, eval_dict if eval_dict is not None else cfg_dict, run_dir / "eval", row, eval_workers,
                 eval_max_samples)
    dim = KINDS[kind]
    cell = {
        "row": row, "kind": kind, "arm": arm, "train_domain": domain, "prompt_style": cfg_dict["data"]["prompt_style"],
        "model": str(model),
        "test": ev["by_modality" if dim == "modality" else "by_question_type"],
        "overall": ev["overall"], "n": ev["n"], "skipped": ev.get("skipped", {}).get("count", 0),
        "format_rate": ev.get("format_rate"), "unparsable": ev.get("unparsable"),
        "train": {k: summary[k] for k in ("total_steps", "minutes", "weight_version", "before", "after",
                                          "final_model", "records") if k in summary},
        "train_seconds": t_eval - t0, "eval_seconds": time.perf_counter() - t_eval,
        "seconds": time.perf_counter() - t0,
    }
    _write_json(run_dir / "cell.json", cell)
    return cell


# --------------------------------------------------------------------------- driver
def run_protocol(cfg, kind: str, *, protocol_dir: str | Path, domains: Optional[list[str]] = None,
                 steps: Optional[int] = None, sft_model: Optional[str] = None, sequential: bool = False,
                 max_parallel: Optional[int] = None, eval_workers: Optional[int] = None,
                 eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
                 eval_fn: Optional[Callable] = None, test_domains: Optional[list[str]] = None,
                 sft_arm: bool = False, prompt_styles: Optional[list[str]] = None,
                 sft_fn: Optional[Callable] = None) -> dict:
    """Run every unfinished row, then write the matrix and the report; returns the matrix.

    ``train_fn(cfg_dict) -> summary`` (GRPO), ``sft_fn(cfg_dict) -> summary`` (the SFT arm) and
    ``eval_fn(model, cfg_dict, out, row, workers, max_samples) -> eval.json dict`` default to
    the real training and ``evaluate_model``; tests pass fakes (with ``sequential=True``)."""
    d = Path(protocol_dir)
    d.mkdir(parents=True, exist_ok=True)
    domains = list(domains or all_domains(kind))
    base_dict = to_dict(cfg)
    styles = list(prompt_styles or [str(cfg.data.prompt_style)])
    if styles[0] != str(cfg.data.prompt_style):
        styles = [str(cfg.data.prompt_style)] + [s for s in styles if s != str(cfg.data.prompt_style)]
    real = train_fn is None or eval_fn is None or (sft_arm and sft_fn is None)
    started = []

    def need_ray() -> None:  # only when something trains or evaluates: a finished protocol just reports
        if real and not ray.is_initialized():
            connect_ray(cfg, wanted_cpus=resource_plan(cfg).totals().get("CPU", 1))
            started.append(True)

    try:
        if real:
            # The real thing: the base model and the dataset before any cell starts.
            base_dict["model"]["path"] = ensure_model(cfg)
            ensure_data(eval_config(base_dict))
        if test_domains is None:
            test_domains = _present_test_domains(base_dict, kind) if eval_fn is None else all_domains(kind)
        by_style = {s: _style_start(base_dict, kind, s, real, need_ray) for s in styles}
        rows = plan_rows(domains, styles, sft_arm=sft_arm, sft_model=bool(sft_model))
        meta = {"kind": kind, "dimension": KINDS[kind], "rows": rows, "cols": test_domains, "steps": steps,
                "base_model": by_style[styles[0]]["model"]["path"], "sft_model": sft_model, "styles": styles,
                "sft_arm": sft_arm, "config": base_dict}
        _write_json(d / "protocol.json", meta)
        jobs = []
        for r in rows:
            if is_finished(d, r):
                log.info("protocol: %s already finished (%s); not recomputed", r, cell_path(d, r) / "cell.json")
                continue
            arm, dom, style = parse_row(r)
            cd = by_style[style or styles[0]]
            model = None
            if arm == BASELINE:
                model = sft_model if dom is None and r.startswith("sft") else cd["model"]["path"]
            jobs.append(dict(row=r, domain=dom, cfg_dict=cd, arm=arm, model=model,
                             eval_dict=domain_filter(cd, kind, test_domains)))
        common = dict(steps=steps, eval_workers=eval_workers, eval_max_samples=eval_max_samples,
                      train_fn=train_fn, sft_fn=sft_fn, eval_fn=eval_fn)
        if jobs:
            need_ray()
        if sequential:
            for j in jobs:
                log.info("protocol: running %s", j["row"])
                run_cell(j.pop("row"), kind, j.pop("domain"), j.pop("cfg_dict"), str(d), **j, **common)
        elif jobs:
            _run_on_ray(cfg, jobs, kind, d, max_parallel, common)
    finally:
        if started:
            ray.shutdown()
    matrix = matrix_from_cells(d)
    write_outputs(d, matrix, {"kind": kind, "base model": meta["base_model"],
                              "steps per run": steps or base_dict["trainer"]["total_steps"],
                              "training domains": ", ".join(domains), "prompt styles": ", ".join(styles),
                              "protocol dir": str(d)})
    return matrix


def _style_start(base_dict: dict, kind: str, style: str, real: bool, need_ray: Callable) -> dict:
    """The config of every row in ``style``; its model.path is the shared warm-start of that
    style (built here once, on the whole training split) or the base model."""
    sd = styled_config(base_dict, style)
    if real and sd["sft"]["warmstart_dir"]:
        wcfg = from_dict(domain_filter(sd, kind, []))
        train, _ = ensure_data(wcfg)
        if not is_model_dir(Path(sd["sft"]["warmstart_dir"]) / "hf"):
            need_ray()  # the warm-start trains on the learner actors
        sd["model"]["path"] = ensure_warmstart(wcfg, sd["model"]["path"], train)
    sd["sft"]["warmstart_dir"] = ""
    return sd


def _present_test_domains(base_dict: dict, kind: str) -> list[str]:
    cfg = from_dict(domain_filter(base_dict, kind, []))
    recs = load_prepared(cfg.data.prepared_dir, cfg.data.test_split)
    other = "question_type" if KINDS[kind] == "modality" else "modality"
    keep = list(cfg.data.question_types if other == "question_type" else cfg.data.modalities)
    key = KINDS[kind]
    present = {getattr(r, key) for r in recs if not keep or getattr(r, other) in keep}
    return [x for x in all_domains(kind) if x in present]


def _run_on_ray(cfg, jobs, kind, d: Path, max_parallel, common) -> None:
    local = is_local(cfg.cluster.address)
    limit = max_parallel or (1 if local else len(jobs))
    # num_cpus=0: the task only coordinates; its rollout / learner actors reserve the real resources.
    task = ray.remote(num_cpus=0, max_retries=0)(run_cell)
    pending: dict = {}
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < limit:
            j = dict(queue.pop(0))
            r = j.pop("row")
            log.info("protocol: submitting %s", r)
            ref = task.options(name=f"protocol-{slug(r)}").remote(r, kind, j.pop("domain"), j.pop("cfg_dict"),
                                                                  str(d), **j, **common)
            pending[ref] = r
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            r = pending.pop(ref)
            try:
                ray.get(ref)
                log.info("protocol: %s finished", r)
            except Exception as e:  # one failed cell does not lose the others; rerun retries it
                log.error("protocol: %s failed: %s", r, describe_failure(e))
